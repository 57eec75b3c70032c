"""Reference greedy generations computed by Hugging Face transformers, for testing saescope's
KV-cached greedy generation and chat templates. Writes tests/fixtures/generate.json with three
groups:

- "smollm2": the bundled SmolLM2-135M-Instruct GGUF (transformers dequantizes it with the `gguf`
  package and runs its own Llama, in float32). Four prompts, each fed twice: as the tokenizer
  gives them (the GGUF says tokenizer.ggml.add_bos_token = false, so no BOS) and with the BOS id
  (1, "<|im_start|>") put first by hand, as saescope's `prompt_ids(text, true)` does. Each case
  is generated alone (no padding), greedily, 40 new tokens, with eos_token_id=None so nothing
  stops early (an EOS picked greedily is kept and generation goes on). For each step: the top-5
  of the raw logits (`output_logits=True`, before any logits processor) and the top-1/top-2
  margin. The same prompts are also generated as one left-padded batch (pad = EOS, attention
  mask), and whether that gives the same tokens is recorded (informational only).
- "smollm2_chat": the chat template transformers reads from the GGUF's
  `tokenizer.chat_template`, and for two conversations the rendered prompt
  (`apply_chat_template(..., tokenize=False, add_generation_prompt=True)`), its token ids, and
  the greedy continuation (at most 40 tokens, stopping at EOS).
- "tiny": the tiny random checkpoints in tests/fixtures/hf/{gpt2,qwen3,gemma2,neox} (loaded in
  float32, eager attention), 32 greedy new tokens from two fixed id prompts, no EOS stop. The
  qwen3 and gemma2 ones have sliding windows of 4, so generation runs well past the window.

Every generation is checked against a full recompute without the KV cache (use_cache=False on
the whole sequence at each step); the largest logit difference is stored as
"max_abs_diff_vs_nocache". Floats are rounded to 6 significant digits.

Run it from the activations/ directory:

    python3 -m venv ~/.cache/saescope/model-ref-venv
    ~/.cache/saescope/model-ref-venv/bin/pip install torch==2.11.0 transformers accelerate gguf numpy
    ~/.cache/saescope/model-ref-venv/bin/python reference/make_generate_fixture.py ~/.cache/saescope/assets/smollm2-135m-instruct
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
torch.manual_seed(0)
t_start = time.time()

src = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/saescope/assets/smollm2-135m-instruct")
gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = "tests/fixtures/generate.json"
TOPK = 5

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "def fibonacci(n):",
    "In 1984, 12345 people paid $3.50 each, for a total of",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three primary colours."},
    ],
]
TINY = ["gpt2", "qwen3", "gemma2", "neox"]
TINY_PROMPTS = [[5, 17, 99, 3], [7, 7, 120, 2, 90, 11]]


def r6(x):
    return float(f"{x:.6g}")


def greedy_kwargs(n, eos):
    # Every sampling knob pinned, so nothing from a model's generation_config changes greedy.
    return dict(
        max_new_tokens=n, min_new_tokens=0, do_sample=False, num_beams=1, temperature=None,
        top_p=None, top_k=None, repetition_penalty=None, eos_token_id=eos,
        return_dict_in_generate=True, output_logits=True, output_scores=True,
    )


def steps(logits):
    """Per-step top-k of the raw logits and the top-1/top-2 margin."""
    top = torch.topk(torch.stack(logits)[:, 0].float(), TOPK, dim=-1)
    return {
        "top5_ids": top.indices.tolist(),
        "top5_logits": [[r6(v) for v in row] for row in top.values.tolist()],
        "margin": [r6(row[0] - row[1]) for row in top.values.tolist()],
    }


def nocache_diff(model, prompt, new, logits):
    """Largest |cached - recomputed| logit over the steps, recomputing each step without a cache."""
    full = torch.tensor([prompt + new])
    with torch.no_grad():
        ref = model(full, use_cache=False).logits[0].float()
    worst = 0.0
    for i, lg in enumerate(logits):
        r = ref[len(prompt) - 1 + i]
        worst = max(worst, float((lg[0].float() - r).abs().max()))
        assert int(r.argmax()) == new[i] or float(torch.topk(r, 2).values[0] - torch.topk(r, 2).values[1]) < 1e-3, (i, new[i])
    return worst


def generate_one(model, ids, n, eos):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             pad_token_id=0 if eos is None else eos, **greedy_kwargs(n, eos))
    new = out.sequences[0, len(ids):].tolist()
    # Raw logits and processed scores agree (no processor is active), and greedy took each argmax.
    for i, (lg, sc) in enumerate(zip(out.logits, out.scores)):
        assert torch.equal(lg, sc), i
        assert int(lg[0].argmax()) == new[i], i
    return new, out.logits


# ---------------------------------------------------------------- SmolLM2 (GGUF)
tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
model.eval()
t_loaded = time.time()

tok_ids = [tok(p)["input_ids"] for p in PROMPTS]
assert tok_ids == [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
bos = tok.bos_token_id
smol_cases = []
for bos_first in (False, True):
    for text, ids in zip(PROMPTS, tok_ids):
        ids = ([bos] if bos_first else []) + ids
        new, logits = generate_one(model, ids, 40, None)
        case = {"text": text, "bos_prepended": bos_first, "prompt_ids": ids, "new_ids": new,
                "new_text": tok.decode(new), "eos_in_new": tok.eos_token_id in new}
        case.update(steps(logits))
        case["max_abs_diff_vs_nocache"] = r6(nocache_diff(model, ids, new, logits))
        smol_cases.append(case)
        print(f"smollm2 bos={bos_first} {text!r} -> {case['new_text']!r} min margin {min(case['margin'])}")

# The same prompts as one left-padded batch.
batched = {}
tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
for bos_first in (False, True):
    rows = [([bos] if bos_first else []) + ids for ids in tok_ids]
    width = max(map(len, rows))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=mask, pad_token_id=tok.pad_token_id,
                             **greedy_kwargs(40, None))
    got = out.sequences[:, width:].tolist()
    single = [c["new_ids"] for c in smol_cases if c["bos_prepended"] == bos_first]
    first_diff = [next((i for i, (a, b) in enumerate(zip(g, s)) if a != b), None) for g, s in zip(got, single)]
    batched["bos" if bos_first else "no_bos"] = {
        "equal_to_single": [g == s for g, s in zip(got, single)],
        "first_differing_step": first_diff,
        "new_ids": got,
    }
    print(f"batched bos={bos_first} equal to single: {[g == s for g, s in zip(got, single)]} first diff {first_diff}")

smollm2 = {
    "model": gguf_file,
    "dtype": "float32",
    "max_new_tokens": 40,
    "stopping": "none: eos_token_id=None, so all 40 tokens are generated even if EOS is picked",
    "tokenizer_adds_bos": tok("x")["input_ids"][0] == bos,
    "bos_id": bos,
    "eos_id": tok.eos_token_id,
    "pad_id": tok.pad_token_id,
    "note": "prompt_ids are exactly the ids fed; bos_prepended=true cases have the BOS id put first by hand",
    "cases": smol_cases,
    "batched_left_padded": {"padding_side": "left", "pad_id": tok.pad_token_id, **batched},
}

# ---------------------------------------------------------------- SmolLM2 chat template
tok.padding_side = "right"
chats = []
for messages in CHATS:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = enc["input_ids"] if not isinstance(enc, list) else enc
    ids = list(ids)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    new, logits = generate_one(model, ids, 40, tok.eos_token_id)
    stopped = len(new) < 40 or new[-1] == tok.eos_token_id
    chats.append({
        "messages": messages,
        "rendered": text,
        "prompt_ids": ids,
        "new_ids": new,
        "new_text": tok.decode(new),
        "new_text_skip_special": tok.decode(new, skip_special_tokens=True),
        "stopped_at_eos": stopped,
        "margin": steps(logits)["margin"],
    })
    print(f"chat {messages[-1]['content']!r} -> {tok.decode(new)!r} stopped={stopped}")
smollm2_chat = {
    "chat_template": tok.chat_template,
    "add_generation_prompt": True,
    "eos_id": tok.eos_token_id,
    "max_new_tokens": 40,
    "stopping": "at eos_id (included in new_ids when hit)",
    "note": "prompt_ids = apply_chat_template(tokenize=True) = tokenizing the rendered text with no special tokens added",
    "conversations": chats,
}
del model

# ---------------------------------------------------------------- tiny random checkpoints
tiny = {}
for name in TINY:
    path = f"tests/fixtures/hf/{name}"
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    cases = []
    for ids in TINY_PROMPTS:
        new, logits = generate_one(m, ids, 32, None)
        case = {"prompt_ids": ids, "new_ids": new}
        case.update(steps(logits))
        case["max_abs_diff_vs_nocache"] = r6(nocache_diff(m, ids, new, logits))
        cases.append(case)
        print(f"{name} {ids} -> {new} min margin {min(case['margin'])} nocache diff {case['max_abs_diff_vs_nocache']}")
    tiny[name] = {
        "path": path,
        "dtype": "float32",
        "attn_implementation": "eager",
        "sliding_window": getattr(m.config, "sliding_window", None),
        "max_new_tokens": 32,
        "stopping": "none (eos_token_id=None)",
        "cases": cases,
    }

fixture = {
    "generator": "reference/make_generate_fixture.py",
    "transformers": __import__("transformers").__version__,
    "torch": torch.__version__,
    "smollm2": smollm2,
    "smollm2_chat": smollm2_chat,
    "tiny": tiny,
}
with open(OUT, "w") as f:
    json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes) in {time.time() - t_start:.1f}s (model load {t_loaded - t_start:.1f}s)")
