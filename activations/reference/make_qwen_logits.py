"""Reference logits of the Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (see make_qwen_fixture.py for
the file), computed by transformers' GGUF loader dequantizing to f32 and its own Qwen2. Writes
tests/fixtures/qwen2-logits.json: per prompt, the ids (no BOS: transformers and llama.cpp add none
for Qwen), the greedy next token and a few greedy steps after it, the top 5 ids and logits at
every position, the last position's logits at every 509th id, and how far those f32 logits are
from the same model's in f64 (the reference's own rounding error). Run from the activations/
directory, with transformers 5.x and `gguf`:

    python reference/make_qwen_logits.py /path/to/dir qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
"""
import json
import sys

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize as gguf_dequantize
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.gguf import dequant

torch.set_num_threads(2)
src, gguf_file = sys.argv[1], sys.argv[2]
path = f"{src}/{gguf_file}"

# transformers 5.24 cannot read Q5_0, which this file uses for most projections; the same patch
# as make_gemma_logits.py, checked against the gguf package before it is trusted.
Q5_0 = 6


def dequant_q5_0(blocks, dtype):
    d = dequant._half(blocks, 0, dtype)
    qh = blocks[:, 2:6].to(torch.int64)
    qh = qh[:, 0] | qh[:, 1] << 8 | qh[:, 2] << 16 | qh[:, 3] << 24
    fifth = (qh[:, None] >> torch.arange(32)) & 1
    qs = blocks[:, 6:22].to(torch.int64)
    q = torch.cat([qs & 0xF, qs >> 4], dim=1) | (fifth << 4)
    return d * (q - 16).to(dtype)


if Q5_0 not in dequant._DEQUANT:
    dequant.GGML_BLOCK[Q5_0] = (32, 22)
    dequant.GGML_NAME[Q5_0] = "Q5_0"
    dequant._DEQUANT[Q5_0] = dequant_q5_0
reader = GGUFReader(path)
for t in reader.tensors:
    if t.tensor_type == GGMLQuantizationType.Q5_0:
        raw = np.asarray(t.data).reshape(-1)
        want = gguf_dequantize(raw, GGMLQuantizationType.Q5_0).reshape(-1)
        got = dequant.dequantize(torch.from_numpy(raw.copy()), Q5_0).numpy()
        assert np.array_equal(got, want.astype(np.float32)), "Q5_0 patch disagrees with gguf"
        break

tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
model.eval()
print(type(model).__name__, next(model.parameters()).dtype)

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "<|im_start|>user\nWrite a Python function that adds two numbers.<|im_end|>\n<|im_start|>assistant\n",
]
STRIDE = 509
GREEDY_STEPS = 8
out = {"model": gguf_file, "stride": STRIDE, "prompts": []}
# The same weights in f64, to measure how far f32 rounding alone moves the reference: on prompts
# that start with a chat marker Qwen's first-position activations run to thousands, and f32
# logits move by a few 1e-4.
model64 = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32).double().eval()
for text in PROMPTS:
    ids = tok.encode(text, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
        steps = model.generate(
            torch.tensor([ids]), max_new_tokens=GREEDY_STEPS, do_sample=False
        )[0, len(ids):].tolist()
        logits64 = model64(torch.tensor([ids])).logits[0]
    top = torch.topk(logits, 5, dim=-1)
    greedy = int(logits[-1].argmax())
    f32_error = max(
        float((logits64.gather(1, top.indices) - top.values.double()).abs().max()),
        float((logits64[-1, ::STRIDE] - logits[-1, ::STRIDE].double()).abs().max()),
    )
    assert steps[0] == greedy
    out["prompts"].append(
        {
            "text": text,
            "ids": ids,
            "greedy_next_id": greedy,
            "greedy_next_text": tok.decode([greedy]),
            "greedy_ids": steps,
            "greedy_text": tok.decode(steps),
            "top5_ids": top.indices.tolist(),
            "top5_logits": top.values.tolist(),
            "last_strided_logits": logits[-1, ::STRIDE].tolist(),
            "reference_f32_error": f32_error,
        }
    )
    print(repr(text), "->", repr(tok.decode(steps)), ids, f"f32 vs f64 {f32_error:.2e}")
with open("tests/fixtures/qwen2-logits.json", "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
