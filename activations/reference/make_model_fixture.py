"""Reference outputs of the bundled SmolLM2-135M GGUF, computed by Hugging Face transformers
(which dequantizes the GGUF with the `gguf` package and runs its own Llama implementation).
Writes tests/fixtures/smollm2/: token ids, last-position logits, per-position top-5 logits, and a
few hook activations, for fixed prompts. Run from the activations/ directory:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.11.0 transformers accelerate gguf numpy
    /tmp/ref/bin/python reference/make_model_fixture.py ~/.cache/saescope/assets/smollm2-135m-instruct
"""
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
src = sys.argv[1]
gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, torch_dtype=torch.float32)
model.eval()

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
]
TOKENIZER_STRINGS = [
    "Hello, world!",
    "In 1984, 12345 people paid $3.50 each.",
    "naïve café — 東京 🙂",
    "  leading spaces and\ttabs\nnewlines",
]

out = "tests/fixtures/smollm2"
os.makedirs(out, exist_ok=True)
captured = {}


def hook(name, kind):
    def f(module, args, output):
        captured[name] = (args[0] if kind == "input" else output).detach().clone()
    return f


layers = model.model.layers
for L in (0, 3):
    layers[L].self_attn.o_proj.register_forward_hook(hook(f"blocks.{L}.attn.hook_z", "input"))
    layers[L].self_attn.o_proj.register_forward_hook(hook(f"blocks.{L}.hook_attn_out", "output"))
    layers[L].mlp.down_proj.register_forward_hook(hook(f"blocks.{L}.mlp.hook_post", "input"))
    layers[L].mlp.down_proj.register_forward_hook(hook(f"blocks.{L}.hook_mlp_out", "output"))
    layers[L].register_forward_hook(lambda m, a, o, L=L: captured.__setitem__(f"blocks.{L}.hook_resid_post", (o[0] if isinstance(o, tuple) else o).detach().clone()))
last = len(layers) - 1
layers[last].register_forward_hook(lambda m, a, o: captured.__setitem__(f"blocks.{last}.hook_resid_post", (o[0] if isinstance(o, tuple) else o).detach().clone()))

index = {"model": gguf_file, "prompts": [], "tokenizer": []}
for i, text in enumerate(PROMPTS):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    captured.clear()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    greedy = int(logits[-1].argmax())
    logits[-1].numpy().astype("<f4").tofile(f"{out}/prompt{i}_last_logits.f32")
    hooks = {}
    for name, t in sorted(captured.items()):
        a = t[0].reshape(len(ids), -1).numpy().astype("<f4")
        a.tofile(f"{out}/prompt{i}_{name}.f32")
        hooks[name] = list(a.shape)
    top = torch.topk(logits, 5, dim=-1)
    index["prompts"].append({
        "text": text,
        "ids": ids,
        "greedy_next_id": greedy,
        "greedy_next_text": tok.decode([greedy]),
        "top5_ids": top.indices.tolist(),
        "top5_logits": top.values.tolist(),
        "hooks": hooks,
    })
for text in TOKENIZER_STRINGS:
    index["tokenizer"].append({"text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]})
with open(f"{out}/index.json", "w") as f:
    json.dump(index, f, indent=1, ensure_ascii=False)
for p in index["prompts"]:
    print(repr(p["text"]), "->", repr(p["greedy_next_text"]), p["ids"])
for t in index["tokenizer"]:
    print(repr(t["text"]), t["ids"])
