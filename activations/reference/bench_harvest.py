"""The PyTorch side of saescope's harvest benchmark (scripts/bench-harvest): Hugging Face
transformers loading the same GGUF, activations captured with register_forward_hook, copied to host
memory and written to Parquet shards (pyarrow, one fixed-size-list column per hook, uncompressed,
as saescope stores them), batches of 16 x 128 tokens, the same thread count. With --stop-after L
the model keeps its first L + 1 blocks, as TransformerLens' stop_at_layer does, so both sides do
the same work. With FILE `-`, DIR is a safetensors checkpoint (scripts/gpu-run's); with
--device cuda the model runs on the GPU and each batch's activations come back to host memory
before they are written, as saescope's do. Prints tokens/s.

    python bench_harvest.py DIR GGUF_FILE|- --layers 6|all --stop-after L --dtype f32|bf16
        --tokens N --threads T [--batch B] [--device cpu|cuda] [--out DIR]
"""
import argparse
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("file")
p.add_argument("--layers", default="6", help="a layer, or `all`")
p.add_argument("--stop-after", type=int, default=None)
p.add_argument("--dtype", default="f32")
p.add_argument("--tokens", type=int, default=8192)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--out", default=None)
p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
a = p.parse_args()
torch.set_num_threads(a.threads)
dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
gguf = {} if a.file == "-" else {"gguf_file": a.file}
# Cast after loading: older transformers call the argument torch_dtype.
m = AutoModelForCausalLM.from_pretrained(a.dir, **gguf).to(device=a.device, dtype=dtype).eval()
layers = m.model.layers
chosen = list(range(len(layers))) if a.layers == "all" else [int(a.layers)]
if a.stop_after is not None:
    m.model.layers = layers[: a.stop_after + 1]
kept = {}
for i in chosen:
    def hook(mod, args, out, i=i):
        out = out[0] if isinstance(out, tuple) else out
        kept[i] = out.float().reshape(-1, out.shape[-1]).cpu().numpy().copy()
    layers[i].register_forward_hook(hook)

out_dir = a.out or tempfile.mkdtemp()
shard = [0]


def write(batch):
    cols = {}
    for i, x in batch.items():
        flat = pa.array(x.reshape(-1), type=pa.float32())
        cols[f"blocks.{i}.hook_resid_post"] = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    path = os.path.join(out_dir, f"shard-{shard[0]:05}.parquet")
    pq.write_table(pa.table(cols), path, compression="none")
    shard[0] += 1


ids = torch.randint(3, 49000, (a.batch, 128), device=a.device)
with torch.no_grad():
    m.model(ids)  # warm-up
    kept.clear()
    n, t = 0, time.time()
    while n < a.tokens:
        m.model(ids)
        n += ids.numel()
        write(kept)
        kept.clear()
    print(f"{n / (time.time() - t):.0f}")
