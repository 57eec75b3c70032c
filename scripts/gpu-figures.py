"""Gathers scripts/gpu-run's figures into one JSON file: each step's outcome and peak GPU
memory, harvest rates and the CUDA activations against the CPU's, the full-depth harvest beside
transformers, training metrics, eval on both devices, and the training-step benchmarks.
Runs on the GPU machine with the torch venv's Python (numpy, pyarrow, safetensors).

    python gpu-figures.py WORK_DIR OUT.json
"""
import glob
import json
import os
import re
import sys

import numpy as np
import pyarrow.parquet as pq

w, dest = sys.argv[1], sys.argv[2]


def load(path):
    try:
        return json.load(open(path))
    except Exception as e:  # a step that failed or never ran leaves nothing to read
        return {"error": repr(e)}


def text(name):
    p = f"{w}/{name}.out"
    return open(p).read() if os.path.exists(p) else ""


steps = [json.loads(line) for line in open(f"{w}/steps.jsonl")]
by_name = {s["name"]: s for s in steps}
out = {"steps": steps}
out["machine"] = open(f"{w}/machine.out").read().strip().splitlines()
out["doctor"] = text("doctor").strip().splitlines()

# GPU memory: samples of (time, MiB in use on the device).
samples = []
if os.path.exists(f"{w}/memory.txt"):
    for line in open(f"{w}/memory.txt"):
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            samples.append((float(parts[0]), int(parts[1])))


def memory(t0, t1, slack=0.3):
    """The most in use during [t0, t1 + slack], and what was in use just before t0."""
    inside = [m for t, m in samples if t0 <= t <= t1 + slack]
    before = [m for t, m in samples if t < t0]
    return {"peak_mib": max(inside) if inside else None, "before_mib": before[-1] if before else None}


for s in steps:
    if "start" in s:
        s["gpu_memory"] = memory(s["start"], s["end"])


def hook_rows(run, hook):
    cols = []
    for f in sorted(glob.glob(f"{run}/activations/*.parquet")):
        col = pq.read_table(f).column(hook).combine_chunks()
        flat = col.flatten()
        if str(flat.type) == "float":
            vals = flat.to_numpy()
        else:  # bf16 stored as fixed_size_binary(2): its bits are the top half of an f32
            raw = np.frombuffer(flat.buffers()[1], dtype=np.uint16)[: len(flat)]
            vals = (raw.astype(np.uint32) << 16).view(np.float32)
        cols.append(vals.reshape(len(col), -1))
    return np.concatenate(cols)


def tokens(run):
    return np.concatenate([pq.read_table(f).column("token_id").to_numpy()
                           for f in sorted(glob.glob(f"{run}/tokens/*.parquet"))])


def rate(name):
    m = re.search(r"([0-9]+) tokens/s\)", text(name))
    return int(m.group(1)) if m else None


harvest = {}
for name in ["cpu-f32", "cpu-bf16", "cuda-f32", "cuda-bf16"]:
    harvest[name] = {"tokens_per_s": rate(f"harvest-{name}")}
try:
    hook = "blocks.3.hook_resid_post"
    ref = hook_rows(f"{w}/run-cpu-f32", hook)
    ref_tok = tokens(f"{w}/run-cpu-f32")
    for name in ["cpu-bf16", "cuda-f32", "cuda-bf16"]:
        got = hook_rows(f"{w}/run-{name}", hook)
        rel = np.linalg.norm(got - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
        harvest[name]["vs_cpu_f32"] = {
            "same_tokens": bool(np.array_equal(tokens(f"{w}/run-{name}"), ref_tok)),
            "max_abs_diff": float(np.abs(got - ref).max()),
            "max_abs_ref": float(np.abs(ref).max()),
            "median_rel_l2": float(np.median(rel)),
            "max_rel_l2": float(rel.max()),
        }
except Exception as e:  # a failed harvest leaves nothing to compare; its step says why
    harvest["comparison_error"] = repr(e)
out["harvest"] = harvest

full = []
for r in [1, 2]:
    lines = text(f"harvest-full-transformers-{r}").split()
    ref = float(lines[-1]) if lines and re.fullmatch(r"[0-9.]+", lines[-1]) else None
    ours = rate(f"harvest-full-saescope-{r}")
    full.append({
        "saescope_tokens_per_s": ours,
        "transformers_tokens_per_s": ref,
        "ratio": ours / ref if ours and ref else None,
        "saescope_gpu_memory": by_name.get(f"harvest-full-saescope-{r}", {}).get("gpu_memory"),
        "transformers_gpu_memory": by_name.get(f"harvest-full-transformers-{r}", {}).get("gpu_memory"),
    })
out["harvest_full_depth"] = {
    "work": "SmolLM2-135M shapes (random weights), layer 15, both stop after it, bf16, "
            "64 x 128 tokens a pass, f32 Parquet shards on both sides",
    "runs": full,
}

run = f"{w}/run-cuda-f32/dictionaries"
out["train"] = {n: load(f"{run}/{n}/metrics.json") for n in ["topk-cpu", "topk-cuda", "mpsae-cuda", "batchtopk-cuda"]}
try:
    from safetensors.numpy import load_file
    a = load_file(f"{run}/topk-cpu/sae_weights.safetensors")["W_dec"]
    b = load_file(f"{run}/topk-cuda/sae_weights.safetensors")["W_dec"]
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    out["train"]["topk_cpu_vs_cuda_decoder_cosine"] = {"median": float(np.median(cos)), "min": float(cos.min())}
except Exception as e:
    out["train"]["topk_cpu_vs_cuda_decoder_cosine"] = {"error": repr(e)}
keep = ["ce_clean", "ce_spliced", "ce_ablated", "ce_loss_recovered", "kl_spliced", "contexts"]
for dev in ["cpu", "cuda"]:
    r = load(f"{w}/eval-{dev}.out")
    out.setdefault("eval", {})[dev] = {k: r.get(k) for k in keep} if "error" not in r else r
summary = load(f"{run}/topk-cuda/features/summary.json")
out["analyze"] = {k: summary.get(k) for k in ["features", "tokens", "dead", "seconds", "error"]}

bench = {}
for name in ["bench-cuda-576", "bench-cuda-2304", "bench-cuda", "bench-cpu"]:
    b = load(f"{w}/{name}.json")
    s = by_name.get(name, {})
    split = b.get("references_started_unix") if isinstance(b, dict) else None
    if "start" in s and split:
        ours = memory(s["start"], split, slack=0)
        held = ours["peak_mib"]
        theirs = memory(split, s["end"])
        b["gpu_memory"] = {
            "saescope_process_peak_mib": held,
            "references_peak_mib_over_saescope_held": (theirs["peak_mib"] - held)
            if theirs["peak_mib"] is not None and held is not None else None,
        }
    bench[name] = b
out["bench_train"] = bench
out["passed"] = all(s.get("rc") == 0 or s.get("unselected") for s in steps)
json.dump(out, open(dest, "w"), indent=1)
print(json.dumps({k: out[k] for k in ["harvest", "harvest_full_depth", "eval", "passed"]}, indent=1))
