"""Sentence-embedding benchmark, the reference side: texts embedded per second by
sentence-transformers running the bundled all-MiniLM-L6-v2 on the CPU, for scripts/bench-embed.

    python bench_embed.py MODEL_DIR TEXTS_FILE THREADS [BATCH]
"""
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

model_dir, texts_file, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 32
torch.set_num_threads(threads)
texts = [line for line in open(texts_file).read().splitlines() if line.strip()]
t0 = time.perf_counter()
model = SentenceTransformer(model_dir, device="cpu")
load = time.perf_counter() - t0
with torch.inference_mode():
    model.encode(texts[:batch], batch_size=batch)
    t1 = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch, convert_to_numpy=True)
    secs = time.perf_counter() - t1
tokens = sum(len(model.tokenizer(t, truncation=True, max_length=model.max_seq_length)["input_ids"]) for t in texts)
print(
    f"sentence-transformers: {len(vectors)} texts ({tokens} tokens) in {secs:.2f} s: "
    f"{len(vectors) / secs:.1f} texts/s (load {load:.2f} s, batch {batch}, {threads} threads, {vectors.shape[1]} wide)"
)
