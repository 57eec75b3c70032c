"""Golden interop fixtures from the real SAELens and sparsify packages.

Each case directory holds exactly what the tool itself writes for a dictionary (SAELens:
cfg.json + sae_weights.safetensors; sparsify: cfg.json + sae.safetensors, or its trainer's
checkpoint folder), plus io.safetensors with
  x      [48, 64]  f32  inputs shaped like residual-stream activations
  codes  [48, 256] f32  the tool's own dense encoding of x
  recon  [48, 64]  f32  the tool's own forward output (decode of those codes)
so that saescope's loaders and encoders can be held to the tools' numbers.

Usage:
  make_interop_fixtures.py [OUTDIR]          write every case (default sae/tests/fixtures/interop)
  make_interop_fixtures.py --check DIR...    load each DIR with SAELens (or sparsify, when the
                                             DIR holds sae.safetensors) and compare its encode and
                                             forward of io.safetensors' x with codes and recon
  make_interop_fixtures.py --dashboard FILE  build SAEDashboard's Neuronpedia dataclasses from a
                                             saescope export (store/tests/fixtures/neuronpedia-batch.json)

Runs on CPU in float32 with fixed seeds, through scripts/interop-fixtures, which installs
sae-lens 6.54.0 and eai-sparsify 1.3.3.
"""

import argparse
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")  # the tools warn about unrelated optional dependencies

import sae_lens  # noqa: E402
import sparsify  # noqa: E402
from sae_lens import SAE  # noqa: E402
from sae_lens.saes import (  # noqa: E402
    JumpReLUSAE,
    JumpReLUSAEConfig,
    MatchingPursuitSAE,
    MatchingPursuitSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata  # noqa: E402
from sae_lens.training.activation_scaler import ActivationScaler  # noqa: E402
from sparsify import SparseCoder, SparseCoderConfig, TrainConfig, Trainer  # noqa: E402

D_IN, D_SAE, K, ROWS = 64, 256, 8, 48
HOOK = "blocks.6.hook_resid_post"
SAE_LENS_VERSION, SPARSIFY_VERSION = "6.54.0", "1.3.3"

CODES_TOL, RECON_TOL = 1e-5, 1e-4


# ---------------------------------------------------------------- inputs and weights


def make_inputs(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that look like residual activations: a shared offset plus per-row noise, with row
    norms spread over about a decade (0.3x to 3x). The offset makes b_dec subtraction matter;
    the spread makes per-row normalisation matter. Returns (x, offset)."""
    offset = 0.8 * torch.randn(D_IN, generator=gen) + 0.3
    noise = torch.randn(ROWS, D_IN, generator=gen)
    scale = torch.exp(torch.empty(ROWS, 1).uniform_(math.log(0.3), math.log(3.0), generator=gen))
    return (scale * (offset + noise)).float(), offset


DECODER_NORMS = {"unit": (1.0, 1.0), "near_unit": (0.85, 1.15), "spread": (0.5, 2.0)}


def decoder_rows(gen: torch.Generator, kind: str) -> torch.Tensor:
    """[D_SAE, D_IN] random directions with lengths drawn log-uniformly from DECODER_NORMS[kind].
    Non-unit rows make a reader that silently renormalises the decoder get different numbers."""
    dirs = torch.randn(D_SAE, D_IN, generator=gen)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    lo, hi = DECODER_NORMS[kind]
    if lo == hi:
        return dirs
    norms = torch.exp(torch.empty(D_SAE, 1).uniform_(math.log(lo), math.log(hi), generator=gen))
    return dirs * norms


def encoder_matrix(gen: torch.Generator, W_dec: torch.Tensor) -> torch.Tensor:
    """[D_IN, D_SAE]: roughly the decoder directions plus independent noise, so encoder and
    decoder are related (as after training) but not tied."""
    dirs = W_dec / W_dec.norm(dim=-1, keepdim=True)
    return (dirs.T + 0.5 * torch.randn(D_IN, D_SAE, generator=gen) / math.sqrt(D_IN)).contiguous()


def decoder_bias(gen: torch.Generator, offset: torch.Tensor) -> torch.Tensor:
    """Close to the data's mean, as a trained b_dec tends to be, but not equal to it."""
    return 0.8 * offset + 0.3 * torch.randn(D_IN, generator=gen)


def metadata() -> SAEMetadata:
    return SAEMetadata(model_name="synthetic-interop", hook_name=HOOK)


def set_params(sae: torch.nn.Module, **params: torch.Tensor) -> None:
    with torch.no_grad():
        for name, value in params.items():
            getattr(sae, name).data.copy_(value)


def pre_acts(sae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The tool's own pre-activations (its hook_sae_acts_pre), read through TransformerLens'
    cache, so biases are calibrated on what the SAE actually computes, normalisation included."""
    with torch.no_grad():
        _, cache = sae.run_with_cache(x)
    return cache["hook_sae_acts_pre"]


def row_quantiles(h: torch.Tensor, gen: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    """Per-latent quantile of its pre-activations over the batch, at a random level in [lo, hi],
    taken halfway between two neighbouring samples: a threshold equal to a sample would make
    that code hinge on the last bit of rounding (strict `>`), which no two implementations share."""
    q = torch.empty(h.shape[1]).uniform_(lo, hi, generator=gen)
    sorted_h = h.sort(dim=0).values
    idx = (q * (h.shape[0] - 2)).round().long()
    cols = torch.arange(h.shape[1])
    return 0.5 * (sorted_h[idx, cols] + sorted_h[idx + 1, cols])


# ---------------------------------------------------------------- SAELens cases


def saelens_case(name: str, seed: int, outdir: Path) -> dict:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, offset = make_inputs(gen)
    spec = SAELENS_CASES[name]
    arch, opts = spec["arch"], dict(spec.get("cfg", {}))
    W_dec = decoder_rows(gen, spec.get("decoder", "spread"))
    b_dec = decoder_bias(gen, offset)
    case_dir = outdir / name

    if arch == "expectednorm":
        return saelens_expected_norm_case(name, gen, x, W_dec, b_dec, case_dir)

    if arch == "matching_pursuit":
        cfg = MatchingPursuitSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=metadata(), **opts)
        if opts.get("residual_threshold") == "calibrate":
            cfg.residual_threshold = calibrate_mp_threshold(cfg, W_dec, b_dec, x, q=0.4)
        sae = MatchingPursuitSAE(cfg)
        set_params(sae, W_dec=W_dec, b_dec=b_dec)
        if opts.get("residual_threshold") == "calibrate":
            unstopped = MatchingPursuitSAE(MatchingPursuitSAEConfig(**{**cfg.__dict__, "residual_threshold": 0.0}))
            set_params(unstopped, W_dec=W_dec, b_dec=b_dec)
            with torch.no_grad():
                early = (sae.encode(x) != unstopped.encode(x)).any(dim=-1).sum().item()
            assert 0 < early < x.shape[0], f"{name}: threshold stops {early} rows early"
            print(f"{name}: residual_threshold {cfg.residual_threshold} stops {early} of {x.shape[0]} rows "
                  f"before max_iterations {cfg.max_iterations}")
    else:
        cls, cfg_cls = {
            "topk": (TopKSAE, TopKSAEConfig),
            "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
            "standard": (StandardSAE, StandardSAEConfig),
        }[arch]
        if arch == "topk":
            opts["k"] = K
        cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=metadata(), **opts)
        sae = cls(cfg)
        W_enc = encoder_matrix(gen, W_dec)
        set_params(sae, W_enc=W_enc, W_dec=W_dec, b_dec=b_dec, b_enc=torch.zeros(D_SAE))
        h0 = pre_acts(sae, x)  # with b_enc = 0
        spread = h0.std().item()
        if arch == "topk":
            # Mostly negative biases: the smallest rows then have fewer than k positive
            # pre-activations, which exercises TopK's ReLU after the selection.
            b_enc = spread * (-0.9 + 0.4 * torch.randn(D_SAE, generator=gen))
            set_params(sae, b_enc=b_enc)
        elif arch == "standard":
            # ReLU fires where h0 > -b_enc: put -b_enc at a high per-latent quantile.
            b_enc = -row_quantiles(h0, gen, 0.70, 0.95) + 0.05 * spread * torch.randn(D_SAE, generator=gen)
            set_params(sae, b_enc=b_enc)
        else:  # jumprelu: random bias, then a positive threshold at a high per-latent quantile
            b_enc = 0.3 * spread * torch.randn(D_SAE, generator=gen)
            set_params(sae, b_enc=b_enc)
            h = pre_acts(sae, x)
            threshold = row_quantiles(h, gen, 0.70, 0.95).clamp(min=0.05 * spread)
            set_params(sae, threshold=threshold)

    return finish_saelens(name, sae, x, case_dir, save=lambda d: sae.save_model(d))


def calibrate_mp_threshold(cfg: MatchingPursuitSAEConfig, W_dec, b_dec, x, q: float) -> float:
    """A residual threshold at the q-quantile of the residual norms that max_iterations leaves,
    so that some rows stop on the threshold before the iteration cap and others do not."""
    probe_cfg = MatchingPursuitSAEConfig(**{**cfg.__dict__, "residual_threshold": 0.0})
    probe = MatchingPursuitSAE(probe_cfg)
    set_params(probe, W_dec=W_dec, b_dec=b_dec)
    with torch.no_grad():
        sae_in = probe.process_sae_in(x)
        residual = sae_in - probe.encode(x) @ probe.W_dec
    norms = residual.norm(dim=-1)
    return round(norms.quantile(q).item(), 4)


def saelens_expected_norm_case(name, gen, x, W_dec, b_dec, case_dir: Path) -> dict:
    """The "expected_average_only_in" normalisation exists only in training: the trainer estimates
    s = sqrt(d_in) / mean ||x|| (ActivationScaler), trains on x * s, then at the end of fit()
    folds s into the weights (fold_activation_norm_scaling_factor sets the config back to "none"),
    and the runner writes the final SAE with save_inference_model. This case goes through those
    same calls, starting from a training TopK SAE with its default rescale_acts_by_decoder_norm
    (true), so the saved files are what a finished SAELens training run writes."""
    cfg = TopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=K, normalize_activations="expected_average_only_in", metadata=metadata()
    )
    train = TopKTrainingSAE(cfg)
    W_enc = encoder_matrix(gen, W_dec)
    set_params(train, W_enc=W_enc, W_dec=W_dec, b_dec=b_dec, b_enc=torch.zeros(D_SAE))

    scaler = ActivationScaler()
    scaler.estimate_scaling_factor(d_in=D_IN, data_provider=iter([x]), n_batches_for_norm_estimate=1)
    s = scaler.scaling_factor
    h0 = pre_acts(train, scaler(x))
    b_enc = h0.std().item() * (-0.9 + 0.4 * torch.randn(D_SAE, generator=gen))
    set_params(train, b_enc=b_enc)
    with torch.no_grad():
        recon_training = scaler.unscale(train(scaler(x)))  # what training saw, mapped back

    train.fold_activation_norm_scaling_factor(s)  # end of SAETrainer.fit()
    case_dir.mkdir(parents=True, exist_ok=True)
    train.save_inference_model(case_dir)  # LanguageModelSAETrainingRunner.save_final_sae()
    info = finish_saelens(name, None, x, case_dir, save=None)
    recon = load_file(case_dir / "io.safetensors")["recon"]
    assert torch.allclose(recon, recon_training, atol=1e-4), "folded SAE disagrees with training"
    info["scaling_factor"] = s
    return info


def finish_saelens(name: str, sae, x: torch.Tensor, case_dir: Path, save) -> dict:
    """Save through the tool, reload through the tool, and take codes and recon from the reloaded
    SAE (what a reader of the files sees); check that the in-memory SAE agrees with it."""
    if save is not None:
        case_dir.mkdir(parents=True, exist_ok=True)
        save(case_dir)
    loaded = SAE.load_from_disk(case_dir)
    with torch.no_grad():
        codes = loaded.encode(x)
        recon = loaded(x)  # forward: decode(encode(x)); normalisation state flows between them
        if loaded.cfg.normalize_activations not in ("constant_norm_rescale", "layer_norm"):
            assert torch.equal(recon, loaded.decode(codes)), f"{name}: forward != decode(encode)"
        if sae is not None:
            assert torch.equal(codes, sae.encode(x)), f"{name}: reload changed the codes"
    write_io(case_dir, x, codes, recon, f"sae-lens {SAE_LENS_VERSION}")
    return describe(name, codes)


# ---------------------------------------------------------------- sparsify cases


def sparsify_coder(gen: torch.Generator, x: torch.Tensor, offset: torch.Tensor) -> SparseCoder:
    cfg = SparseCoderConfig(k=K, num_latents=D_SAE)  # everything else at sparsify's defaults
    sae = SparseCoder(D_IN, cfg, device="cpu", dtype=torch.float32)
    W_dec = decoder_rows(gen, "spread")
    W_enc = encoder_matrix(gen, W_dec)  # [D_IN, D_SAE]; sparsify's encoder.weight is its transpose
    with torch.no_grad():
        sae.encoder.weight.copy_(W_enc.T)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(decoder_bias(gen, offset))
        spread = torch.nn.functional.linear(x - sae.b_dec, sae.encoder.weight).std().item()
        sae.encoder.bias.copy_(spread * (-0.9 + 0.4 * torch.randn(D_SAE, generator=gen)))
    return sae


def sparsify_outputs(sae: SparseCoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        top_acts, top_indices, _ = sae.encode(x)
        codes = torch.zeros(x.shape[0], sae.num_latents).scatter_(-1, top_indices, top_acts)
        recon = sae(x).sae_out
        assert torch.equal(recon, sae.decode(top_acts, top_indices)), "forward != decode(encode)"
    return codes, recon


def sparsify_case(name: str, seed: int, outdir: Path) -> dict:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, offset = make_inputs(gen)
    sae = sparsify_coder(gen, x, offset)
    case_dir = outdir / name
    if name == "sparsify-topk":
        sae.save_to_disk(case_dir)
        sae_dir = case_dir
    else:
        # The trainer writes one folder per hookpoint under save_dir/run_name, next to its own
        # config.json and state files. Call its real checkpoint code on a trainer that holds this
        # one coder (no model, dataset or optimiser: those only feed training).
        # It writes to the relative save_dir "checkpoints" (its default, recorded in config.json),
        # so save from a scratch directory and move the run folder into place.
        hook = "layers.6"
        trainer = Trainer.__new__(Trainer)
        trainer.cfg = TrainConfig(sae=sae.cfg, hookpoints=[hook], run_name=name)
        trainer.saes = {hook: sae}
        trainer.optimizers, trainer.lr_schedulers = [], []
        trainer.global_step = 1000
        trainer.num_tokens_since_fired = {hook: torch.zeros(sae.num_latents, dtype=torch.long)}
        trainer.best_loss = {hook: float("inf")}
        with tempfile.TemporaryDirectory() as scratch:
            here = os.getcwd()
            os.chdir(scratch)
            try:
                trainer.save()
            finally:
                os.chdir(here)
            shutil.move(os.path.join(scratch, trainer.cfg.save_dir, name), case_dir)
        sae_dir = case_dir / hook
    loaded = SparseCoder.load_from_disk(sae_dir)
    codes, recon = sparsify_outputs(loaded, x)
    ref_codes, _ = sparsify_outputs(sae, x)
    assert torch.equal(codes, ref_codes), f"{name}: reload changed the codes"
    write_io(case_dir, x, codes, recon, f"eai-sparsify {SPARSIFY_VERSION}")
    return describe(name, codes)


# ---------------------------------------------------------------- shared


def write_io(case_dir: Path, x, codes, recon, tool: str) -> None:
    tensors = {"x": x, "codes": codes, "recon": recon}
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()},
              str(case_dir / "io.safetensors"), metadata={"made_by": tool})


def describe(name: str, codes: torch.Tensor) -> dict:
    l0 = (codes != 0).sum(dim=-1).float()
    frac = l0.mean().item() / codes.shape[1]
    # Every case must have something to compare and must not be trivially dense.
    assert l0.min() > 0, f"{name}: a row with no active latent"
    assert frac < 0.5, f"{name}: {frac:.0%} of latents fire"
    if name.startswith(("saelens-jumprelu", "saelens-standard")):
        assert 0.05 <= frac <= 0.30, f"{name}: {frac:.1%} of latents fire, want 5-30%"
    return {
        "name": name,
        "mean_l0": round(l0.mean().item(), 2),
        "min_l0": int(l0.min()),
        "max_l0": int(l0.max()),
        "rows_below_k": int((l0 < K).sum()),
    }


SAELENS_CASES: dict[str, dict] = {
    "saelens-topk-applybdec": {"arch": "topk", "cfg": {"apply_b_dec_to_input": True}},
    "saelens-topk-noapplybdec": {"arch": "topk", "cfg": {"apply_b_dec_to_input": False}},
    "saelens-jumprelu-applybdec": {"arch": "jumprelu", "cfg": {"apply_b_dec_to_input": True}},
    "saelens-jumprelu-noapplybdec": {"arch": "jumprelu", "cfg": {"apply_b_dec_to_input": False}},
    "saelens-standard-applybdec": {"arch": "standard", "cfg": {"apply_b_dec_to_input": True}},
    "saelens-standard-noapplybdec": {"arch": "standard", "cfg": {"apply_b_dec_to_input": False}},
    "saelens-standard-constnorm": {"arch": "standard", "cfg": {"normalize_activations": "constant_norm_rescale"}},
    "saelens-standard-layernorm": {"arch": "standard", "cfg": {"normalize_activations": "layer_norm"}},
    "saelens-topk-expectednorm": {"arch": "expectednorm"},
    "saelens-topk-rescale": {"arch": "topk", "cfg": {"rescale_acts_by_decoder_norm": True}},
    # Matching pursuit is tied (encoder = decoder^T) and its update r -= <r, d> d only shrinks the
    # residual for |d|^2 < 2, so its rows stay near unit length (its training starts them at 1).
    "saelens-mp-default": {"arch": "matching_pursuit", "decoder": "unit"},
    "saelens-mp-threshold": {
        "arch": "matching_pursuit",
        "decoder": "near_unit",
        "cfg": {"residual_threshold": "calibrate", "max_iterations": 12, "stop_on_duplicate_support": False},
    },
    "saelens-mp-noapplybdec": {"arch": "matching_pursuit", "decoder": "near_unit", "cfg": {"apply_b_dec_to_input": False}},
}
SPARSIFY_CASES = ["sparsify-topk", "sparsify-checkpoint"]


def generate(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    names = list(SAELENS_CASES) + SPARSIFY_CASES
    for name in names:
        if (outdir / name).exists():
            shutil.rmtree(outdir / name)
    rows = []
    for i, name in enumerate(names):
        seed = 1000 + 17 * i
        info = saelens_case(name, seed, outdir) if name.startswith("saelens") else sparsify_case(name, seed, outdir)
        rows.append(info)
        extra = f", scaling factor {info['scaling_factor']:.5f} folded" if "scaling_factor" in info else ""
        print(f"{name:32s} mean L0 {info['mean_l0']:6.2f}  (min {info['min_l0']}, max {info['max_l0']}, "
              f"{info['rows_below_k']} rows < {K}){extra}")
    write_readme(outdir, rows)
    total = sum(f.stat().st_size for f in outdir.rglob("*") if f.is_file())
    print(f"{len(rows)} cases, {total / 1e6:.2f} MB in {outdir}")


WHAT = {
    "saelens-topk-applybdec": "TopKSAE (k 8), decoder rows of length 0.5-2",
    "saelens-topk-noapplybdec": "TopKSAE, apply_b_dec_to_input false; some rows have < k positive pre-activations",
    "saelens-jumprelu-applybdec": "JumpReLUSAE, positive thresholds",
    "saelens-jumprelu-noapplybdec": "JumpReLUSAE, apply_b_dec_to_input false",
    "saelens-standard-applybdec": "StandardSAE (ReLU)",
    "saelens-standard-noapplybdec": "StandardSAE, apply_b_dec_to_input false",
    "saelens-standard-constnorm": 'StandardSAE, normalize_activations "constant_norm_rescale"',
    "saelens-standard-layernorm": 'StandardSAE, normalize_activations "layer_norm"',
    "saelens-topk-expectednorm": 'TopKTrainingSAE with "expected_average_only_in": scaling factor estimated '
    "(ActivationScaler), folded (fold_activation_norm_scaling_factor), saved with save_inference_model, "
    "which also folds the decoder norms (rescale_acts_by_decoder_norm true); cfg.json says \"none\"",
    "saelens-topk-rescale": "TopKSAE, rescale_acts_by_decoder_norm true, decoder rows of length 0.5-2",
    "saelens-mp-default": "MatchingPursuitSAE, default stopping (residual_threshold 0.01, max_iterations null, "
    "stop_on_duplicate_support true), unit decoder rows",
    "saelens-mp-threshold": "MatchingPursuitSAE, residual_threshold that stops some rows before max_iterations 12, "
    "stop_on_duplicate_support false",
    "saelens-mp-noapplybdec": "MatchingPursuitSAE, apply_b_dec_to_input false (b_dec then unused)",
    "sparsify-topk": "SparseCoder.save_to_disk, default config with k 8, num_latents 256; decoder rows of length 0.5-2",
    "sparsify-checkpoint": "sparsify Trainer.save() layout: config.json, state.pt, rank_0_state.pt and layers.6/ "
    "(no optimizer or lr_scheduler files: the trainer here holds none); io.safetensors is for layers.6",
}


def write_readme(outdir: Path, rows: list[dict]) -> None:
    lines = [
        "# Interop fixtures",
        "",
        f"Written by SAELens {SAE_LENS_VERSION} (`sae-lens`) and EleutherAI sparsify {SPARSIFY_VERSION} "
        f"(`eai-sparsify`) on CPU in float32, torch {torch.__version__.split('+')[0]}, by "
        "`sae/reference/make_interop_fixtures.py`. Regenerate (byte-identical) with `scripts/interop-fixtures`.",
        "",
        "Each directory holds what the tool itself saves (SAELens: `cfg.json` + `sae_weights.safetensors`; "
        "sparsify: `cfg.json` + `sae.safetensors`) and `io.safetensors`: `x` [48, 64] inputs (shared offset, "
        "row norms 0.3x-3x), `codes` [48, 256] the tool's dense encoding of `x`, `recon` [48, 64] its forward "
        "output. Codes and recon come from the dictionary reloaded from these files.",
        "",
        "| directory | what | mean L0 |",
        "|---|---|---|",
    ]
    lines += [f"| `{r['name']}` | {WHAT[r['name']]} | {r['mean_l0']:.2f} |" for r in rows]
    lines += [
        "",
        "`scripts/interop-fixtures --check DIR...` loads dictionaries that saescope wrote with SAELens and "
        f"compares its encode and forward with their `io.safetensors` (tolerances {CODES_TOL:g} / {RECON_TOL:g}).",
        "",
    ]
    (outdir / "README.md").write_text("\n".join(lines))


# ---------------------------------------------------------------- --check


def check(dirs: list[str]) -> int:
    failed = 0
    for d in map(Path, dirs):
        io = load_file(d / "io.safetensors")
        x, want_codes, want_recon = io["x"], io["codes"], io["recon"]
        with torch.no_grad():
            if (d / "sae_weights.safetensors").exists():
                sae = SAE.load_from_disk(d)
                codes, recons = sae.encode(x), [sae(x)]
                if sae.cfg.normalize_activations not in ("constant_norm_rescale", "layer_norm"):
                    # Also decode the file's own codes, so a decode error is not hidden behind an
                    # encode that happens to agree. (The per-row normalisations need the input.)
                    recons.append(sae.decode(want_codes))
                tool = f"sae-lens {sae_lens.__version__}"
            else:
                inner = d if (d / "sae.safetensors").exists() else next(p.parent for p in d.glob("*/sae.safetensors"))
                coder = SparseCoder.load_from_disk(inner)
                codes, recon = sparsify_outputs(coder, x)
                recons = [recon]
                tool = f"eai-sparsify {sparsify.__version__}"
        dc = (codes - want_codes).abs().max().item()
        dr = max((r - want_recon).abs().max().item() for r in recons)
        ok = dc <= CODES_TOL and dr <= RECON_TOL
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {d}: {tool}, max |codes diff| {dc:.3g} (tol {CODES_TOL:g}), "
              f"max |recon diff| {dr:.3g} (tol {RECON_TOL:g})")
    return 1 if failed else 0


# ---------------------------------------------------------------- --dashboard


# Fields SAEDashboard defines that saescope leaves out on purpose: the batch's optional suffix,
# a feature's decoder vector, and direct feature attribution (attention SAEs only).
DASHBOARD_OPTIONAL = {"sae_id_suffix", "vector", "dfa_values", "dfa_maxValue", "dfa_targetIndex"}


def fits(value, annotation) -> bool:
    """Whether a JSON value has the type SAEDashboard's constructor annotates."""
    text = str(annotation)
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return number(value)
    if annotation is str:
        return isinstance(value, str)
    if text.startswith("list[float]"):
        return isinstance(value, list) and all(map(number, value))
    if text.startswith("list[int]"):
        return isinstance(value, list) and all(isinstance(v, int) for v in value)
    if text.startswith("list[str]"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return True  # nested objects are checked by building them


def check_dashboard(path: str) -> int:
    """Builds SAEDashboard's own NeuronpediaDashboardBatch (and its features and activations)
    from a saescope export: an unknown field fails the constructor, and every field it defines
    must be present (except DASHBOARD_OPTIONAL) with the type it annotates and survive its
    to_dict unchanged."""
    import inspect
    import json

    from sae_dashboard.neuronpedia.neuronpedia_dashboard import (
        NeuronpediaDashboardActivation,
        NeuronpediaDashboardBatch,
        NeuronpediaDashboardFeature,
    )

    raw = json.loads(Path(path).read_text())
    batch = NeuronpediaDashboardBatch(**raw)
    problems = []

    def fields(cls, obj: dict, where: str):
        params = inspect.signature(cls.__init__).parameters
        for name, p in params.items():
            if name == "self":
                continue
            if name not in obj:
                if name not in DASHBOARD_OPTIONAL:
                    problems.append(f"{where}: field `{name}` is missing")
            elif not fits(obj[name], p.annotation):
                problems.append(f"{where}: field `{name}` is not {p.annotation}: {obj[name]!r:.80}")

    fields(NeuronpediaDashboardBatch, raw, "batch")
    for i, f in enumerate(raw["features"]):
        fields(NeuronpediaDashboardFeature, f, f"feature {i}")
        for j, a in enumerate(f["activations"]):
            fields(NeuronpediaDashboardActivation, a, f"feature {i} activation {j}")
    back = batch.to_dict()
    for i, (f, g) in enumerate(zip(raw["features"], back["features"])):
        for k, v in f.items():
            if k != "activations" and g.get(k) != v:
                problems.append(f"feature {i}: `{k}` changed on the way through SAEDashboard")
        kept = [{k: b.get(k) for k in a} for a, b in zip(f["activations"], g["activations"])]
        if kept != f["activations"] or len(g["activations"]) != len(f["activations"]):
            problems.append(f"feature {i}: activations changed on the way through SAEDashboard")
    for p in problems:
        print("FAIL", p)
    n = len(batch.features)
    acts = sum(len(f.activations) for f in batch.features)
    print(f"{'ok  ' if not problems else 'FAIL'} {path}: {n} features, {acts} activation records "
          f"built as SAEDashboard's NeuronpediaDashboardBatch")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare the given dictionaries instead of writing")
    parser.add_argument("--dashboard", metavar="FILE", help="load a saescope Neuronpedia export with SAEDashboard")
    parser.add_argument("paths", nargs="*", help="OUTDIR (default sae/tests/fixtures/interop), or with --check the DIRs")
    args = parser.parse_args()
    assert sae_lens.__version__ == SAE_LENS_VERSION, sae_lens.__version__
    assert sparsify.__version__ == SPARSIFY_VERSION, sparsify.__version__
    torch.set_num_threads(1)  # one thread: reductions in a fixed order
    if args.dashboard:
        sys.exit(check_dashboard(args.dashboard))
    if args.check:
        if not args.paths:
            parser.error("--check needs at least one DIR")
        sys.exit(check(args.paths))
    if len(args.paths) > 1:
        parser.error("give one OUTDIR")
    generate(Path(args.paths[0] if args.paths else "sae/tests/fixtures/interop"))


if __name__ == "__main__":
    main()
