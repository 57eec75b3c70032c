"""Reference logits of the gemma-3-270m Q4_K_M GGUF (see make_gemma_fixture.py for the file),
computed by transformers' GGUF loader dequantizing to f32 and its own Gemma 3. Writes
tests/fixtures/gemma3-logits.json: per prompt, the ids (BOS first), the greedy next token, the top
5 ids and logits at every position, and the last position's logits at every 509th id (the whole
row is 1 MB a prompt). Run from the activations/ directory, with transformers 5.x and `gguf`:

    python reference/make_gemma_logits.py /path/to/dir gemma-3-270m-q4_k_m.gguf
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

# transformers 5.24 cannot read Q5_0, which this file uses for most projections; teach it here.
Q5_0 = 6


def dequant_q5_0(blocks, dtype):
    d = dequant._half(blocks, 0, dtype)
    qh = blocks[:, 2:6].to(torch.int64)
    qh = qh[:, 0] | qh[:, 1] << 8 | qh[:, 2] << 16 | qh[:, 3] << 24
    fifth = (qh[:, None] >> torch.arange(32)) & 1
    qs = blocks[:, 6:22].to(torch.int64)
    q = torch.cat([qs & 0xF, qs >> 4], dim=1) | (fifth << 4)
    return d * (q - 16).to(dtype)


dequant.GGML_BLOCK[Q5_0] = (32, 22)
dequant.GGML_NAME[Q5_0] = "Q5_0"
dequant._DEQUANT[Q5_0] = dequant_q5_0

# The patch must agree with the gguf package on a real tensor before it is trusted.
reader = GGUFReader(path)
t = next(t for t in reader.tensors if t.tensor_type == GGMLQuantizationType.Q5_0)
raw = np.asarray(t.data).reshape(-1)
want = gguf_dequantize(raw, GGMLQuantizationType.Q5_0).reshape(-1)
got = dequant.dequantize(torch.from_numpy(raw.copy()), Q5_0).numpy()
assert np.array_equal(got, want.astype(np.float32)), "Q5_0 patch disagrees with gguf"

tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
model.eval()
print(type(model).__name__, next(model.parameters()).dtype)

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "def add(a, b):\n    return",
]
STRIDE = 509
out = {"model": gguf_file, "stride": STRIDE, "prompts": []}
for text in PROMPTS:
    ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    top = torch.topk(logits, 5, dim=-1)
    greedy = int(logits[-1].argmax())
    out["prompts"].append(
        {
            "text": text,
            "ids": ids,
            "greedy_next_id": greedy,
            "greedy_next_text": tok.decode([greedy]),
            "top5_ids": top.indices.tolist(),
            "top5_logits": top.values.tolist(),
            "last_strided_logits": logits[-1, ::STRIDE].tolist(),
        }
    )
    print(repr(text), "->", repr(tok.decode([greedy])), ids)
with open("tests/fixtures/gemma3-logits.json", "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
