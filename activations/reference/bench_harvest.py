"""The PyTorch side of saescope's harvest benchmark (scripts/bench-harvest): Hugging Face
transformers loading the same GGUF, activations captured with register_forward_hook and copied to
host memory (numpy), batches of 16 x 128 tokens, the same thread count. Prints tokens/s.

    python bench_harvest.py GGUF_DIR GGUF_FILE --hooks 1|30 --dtype f32|bf16 --tokens N --threads T
"""
import argparse
import time

import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("file")
p.add_argument("--hooks", type=int, default=1)
p.add_argument("--dtype", default="f32")
p.add_argument("--tokens", type=int, default=8192)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
m = AutoModelForCausalLM.from_pretrained(a.dir, gguf_file=a.file, dtype=dtype).eval()
layers = m.model.layers
chosen = [6] if a.hooks == 1 else range(len(layers))
kept = []
for i in chosen:
    layers[i].register_forward_hook(
        lambda mod, args, out: kept.append((out[0] if isinstance(out, tuple) else out).float().numpy().copy())
    )
ids = torch.randint(3, 49000, (16, 128))
with torch.no_grad():
    m.model(ids)  # warm-up
    kept.clear()
    n, t = 0, time.time()
    while n < a.tokens:
        m.model(ids)
        n += ids.numel()
        kept.clear()
    print(f"{n / (time.time() - t):.0f}")
