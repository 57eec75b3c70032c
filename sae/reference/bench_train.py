"""The training-step benchmark's references: one full step of EleutherAI's sparsify (TopK) and of
SAELens (TopK, BatchTopK, matching pursuit) at the shapes saescope's `bench_train` uses, in the
same way each library's own trainer takes a step, next to one f32 matmul of the encoder's shape
timed here (the floor the ratios are taken against, measured by this torch).

    python bench_train.py --steps 5 --threads 2 [--batch 4096 --d 576 --latents 16384 --k 32]
        [--device cpu|cuda]

Prints one JSON object a line: {"name", "ms_per_step", "x_matmul"}, on a GPU with the step's
peak memory as torch's allocator counts it; a library that is not
installed or fails prints {"name", "error"} and the others still run. Other lines (the
libraries' own messages) are not JSON.
"""

import argparse
import json
import os
import time

import torch

if not torch.cuda.is_available():
    # sparsify decodes with a Triton kernel when Triton is installed; without a GPU it cannot
    # run, and sparsify's own switch selects its eager (embedding-bag) decoder.
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")


def timed(steps, step, device):
    """Seconds per call of `step`, after one warm-up call; on a GPU the queue is drained before
    the clock starts and before it stops."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def import_sparsify():
    """sparsify's sparse coder and optimizer. Its package imports its trainer, and with it
    `datasets`; where that is missing (the GPU machine, which gets sparsify's pure-Python wheels
    only), the modules the sparse coder needs are loaded without the package's __init__."""
    try:
        from sparsify import SparseCoder, SparseCoderConfig
        from sparsify.sign_sgd import SignSGD
    except ImportError:
        import importlib.util
        import sys
        import types

        for name in [m for m in sys.modules if m == "sparsify" or m.startswith("sparsify.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("sparsify")
        if spec is None:
            raise
        shell = types.ModuleType("sparsify")
        shell.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = shell
        from sparsify.config import SparseCoderConfig
        from sparsify.sign_sgd import SignSGD
        from sparsify.sparse_coder import SparseCoder
    return SparseCoder, SparseCoderConfig, SignSGD


def sparsify_topk(a, x):
    from schedulefree import ScheduleFreeWrapper

    SparseCoder, SparseCoderConfig, SignSGD = import_sparsify()
    sae = SparseCoder(a.d, SparseCoderConfig(num_latents=a.latents, k=a.k), device=a.device)
    # sparsify's default optimizer ("signum"), with its default learning rate.
    lr = 5e-3 / (a.latents / 2**14) ** 0.5
    opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    opt.train()

    def step():
        # As sparsify's Trainer: unit-norm decoder rows, FVU loss (no dead latents, so no
        # AuxK), the decoder's gradient made orthogonal to its rows, the optimizer.
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=None)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()

    return step


def saelens(kind):
    def make(a, x):
        import sae_lens
        from sae_lens.saes.sae import TrainStepInput

        if kind == "topk":
            cfg = sae_lens.TopKTrainingSAEConfig(d_in=a.d, d_sae=a.latents, k=a.k)
            sae = sae_lens.TopKTrainingSAE(cfg)
        elif kind == "batchtopk":
            cfg = sae_lens.BatchTopKTrainingSAEConfig(d_in=a.d, d_sae=a.latents, k=a.k)
            sae = sae_lens.BatchTopKTrainingSAE(cfg)
        else:
            # Exactly k steps for every token, as saescope trains.
            cfg = sae_lens.MatchingPursuitTrainingSAEConfig(
                d_in=a.d,
                d_sae=a.latents,
                max_iterations=a.k,
                residual_threshold=0.0,
                stop_on_duplicate_support=False,
            )
            sae = sae_lens.MatchingPursuitTrainingSAE(cfg)
        sae = sae.to(a.device)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
        sae.train()
        since_fired = torch.zeros(a.latents, device=a.device)
        freq = torch.zeros(a.latents, device=a.device)

        def step():
            # As SAELens' SAETrainer._train_step: forward and loss, the firing statistics,
            # backward, clip at 1, Adam.
            out = sae.training_forward_pass(
                step_input=TrainStepInput(
                    sae_in=x,
                    coefficients={},
                    dead_neuron_mask=None,
                    n_training_steps=0,
                    is_logging_step=False,
                )
            )
            with torch.no_grad():
                firing = out.feature_acts.bool().float()
                fired = firing.sum(-2).bool()
                since_fired.add_(1)
                since_fired[fired] = 0
                freq.add_(firing.sum(0))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
            opt.zero_grad()

        return step

    return make


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--latents", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.batch, a.d, device=a.device)
    w = torch.randn(a.latents, a.d, device=a.device) / a.d**0.5
    out = torch.empty(a.batch, a.latents, device=a.device)
    floor = timed(a.steps, lambda: torch.matmul(x, w.T, out=out), a.device)
    print(json.dumps({"name": "torch matmul", "ms_per_step": floor * 1e3, "x_matmul": 1.0}))
    runs = [
        ("sparsify topk", sparsify_topk),
        ("saelens topk", saelens("topk")),
        ("saelens batchtopk", saelens("batchtopk")),
        ("saelens mpsae", saelens("mpsae")),
    ]
    for name, make in runs:
        if a.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            s = timed(a.steps, make(a, x), a.device)
            row = {"name": name, "ms_per_step": s * 1e3, "x_matmul": s / floor}
            if a.device == "cuda":  # its own peak, the input batch and the matmul's buffers included
                row["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
                row["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        except Exception as e:  # a missing library, or one whose API moved
            row = {"name": name, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
