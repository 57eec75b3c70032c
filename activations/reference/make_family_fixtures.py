"""Tiny randomly initialised (seeded) checkpoints of the model families published sparse
dictionaries were trained on, and what Hugging Face transformers computes for them, for
tests/families.rs. Writes tests/fixtures/hf/{qwen3,gemma2,gemma3,neox,neox-serial,llama3,mistral,
qwen2}/: config.json, model.safetensors (bf16) and reference.json (input ids, logits, and every
hook of every layer, each captured with forward hooks where saescope defines it).

Each configuration makes the family's peculiarities matter: norm weights and biases are
drawn at random (zero-initialised Gemma norms would hide a missing "1 +"), the soft caps
are small enough to bend the values, the sequence (10 tokens) is longer than the sliding window
(4), head size times heads differs from the model width, Gemma's query_pre_attn_scalar differs
from its head size, Gemma 3's global layer uses linear RoPE scaling, the Llama 3 RoPE
scaling's original context (32) puts the head's wavelengths in all three of its bands, Mistral's
window (4) applies on every layer, and Qwen2 has its random q/k/v biases (and none on o_proj).

Each fixture is seeded on its own (build() calls torch.manual_seed), so one appended at the end
leaves the files of the others byte for byte as they were.

Weights are rounded to bf16 before the reference runs (in f32), so the saved bf16 file holds
exactly the weights the reference used. Attention is transformers' eager implementation, which
honours soft caps and windows.

Run it from the repository root with scripts/family-fixtures, or by hand from activations/:

    python3 -m venv ~/.cache/saescope/model-ref-venv
    ~/.cache/saescope/model-ref-venv/bin/pip install torch==2.11.0 transformers numpy
    ~/.cache/saescope/model-ref-venv/bin/python reference/make_family_fixtures.py
"""
import json
import os

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

IDS = [[5, 17, 99, 3, 42, 8, 127, 64, 1, 33], [7, 7, 7, 120, 2, 90, 11, 0, 56, 23]]
OUT = "tests/fixtures/hf"


def randomise_norms_and_biases(model, one_centred):
    """Draws every norm weight at random, around 0 where the norm scales by (1 + w), around 1
    where it scales by w, and every bias (transformers initialises both to constants, which
    would hide a norm or bias left out)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.normal_(0.0 if one_centred else 1.0, 0.3)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.2)


def round_to_bf16(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def rounded(t):
    """Nested lists with 8 significant digits: well below the tests' tolerance, and half the
    bytes of full float repr."""
    return json.loads(json.dumps(t.tolist(), default=float), parse_float=lambda s: float(f"{float(s):.8g}"))


def run(name, model, blocks, parts):
    """`parts(block)` names the modules whose inputs and outputs are the hooks: (o_proj-like,
    attn_out module, down_proj-like, mlp_out module). attn.hook_z and mlp.hook_post are the
    inputs of the first and third, hook_attn_out and hook_mlp_out the outputs of the second and
    fourth (for Gemma the post-norms, for the others the projections themselves)."""
    out = f"{OUT}/{name}"
    os.makedirs(out, exist_ok=True)
    captured = {}

    def keep(key):
        return lambda m, a, o: captured.__setitem__(key, o[0] if isinstance(o, tuple) else o)

    def keep_input(key):
        return lambda m, a, o: captured.__setitem__(key, a[0])

    for L, blk in enumerate(blocks):
        o_proj, attn_out, down, mlp_out = parts(blk)
        blk.register_forward_pre_hook(
            lambda m, a, kw, L=L: captured.__setitem__(
                f"blocks.{L}.hook_resid_pre", a[0] if a else kw["hidden_states"]),
            with_kwargs=True)
        o_proj.register_forward_hook(keep_input(f"blocks.{L}.attn.hook_z"))
        attn_out.register_forward_hook(keep(f"blocks.{L}.hook_attn_out"))
        down.register_forward_hook(keep_input(f"blocks.{L}.mlp.hook_post"))
        mlp_out.register_forward_hook(keep(f"blocks.{L}.hook_mlp_out"))
        blk.register_forward_hook(keep(f"blocks.{L}.hook_resid_post"))
    with torch.no_grad():
        logits = model(torch.tensor(IDS)).logits
    ref = {
        "ids": IDS,
        "logits": rounded(logits),
        "hooks": {k: rounded(v.reshape(len(IDS), len(IDS[0]), -1)) for k, v in sorted(captured.items())},
    }
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(f"{out}/{extra}"):
            os.remove(f"{out}/{extra}")
    with open(f"{out}/reference.json", "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    sizes = {f: os.path.getsize(f"{out}/{f}") for f in sorted(os.listdir(out))}
    print(f"{out}: {sizes}; |logits| max {logits.abs().max():.2f}")


def build(config, seed, one_centred):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    randomise_norms_and_biases(model, one_centred)
    round_to_bf16(model)
    return model


llama_like = lambda b: (b.self_attn.o_proj, b.self_attn.o_proj, b.mlp.down_proj, b.mlp.down_proj)
gemma_like = lambda b: (b.self_attn.o_proj, b.post_attention_layernorm, b.mlp.down_proj, b.post_feedforward_layernorm)
neox_like = lambda b: (b.attention.dense, b.attention.dense, b.mlp.dense_4h_to_h, b.mlp.dense_4h_to_h)

# Qwen3: QK norm, heads wider than width / heads, tied embeddings; also Qwen2-style attention
# biases and a sliding window from layer 1 on, to cover those Llama-family paths.
qwen3 = build(Qwen3Config(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True, attention_bias=True,
    use_sliding_window=True, sliding_window=4, max_window_layers=1, initializer_range=0.1,
), seed=1, one_centred=False)
run("qwen3", qwen3, qwen3.model.layers, llama_like)

gemma2 = build(Gemma2Config(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    rms_norm_eps=1e-6, rope_theta=10000.0, query_pre_attn_scalar=24, sliding_window=4,
    attn_logit_softcapping=2.0, final_logit_softcapping=5.0, hidden_activation="gelu_pytorch_tanh",
    initializer_range=0.2, pad_token_id=0,
), seed=2, one_centred=True)
run("gemma2", gemma2, gemma2.model.layers, gemma_like)

# Layers 0 and 1 slide, layer 2 is global (every third), with linear RoPE scaling on it only.
gemma3 = build(Gemma3TextConfig(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    rms_norm_eps=1e-6, rope_theta=1e6, rope_local_base_freq=1e4,
    rope_scaling={"rope_type": "linear", "factor": 2.0}, sliding_window_pattern=3,
    query_pre_attn_scalar=24, sliding_window=4, hidden_activation="gelu_pytorch_tanh",
    initializer_range=0.2, pad_token_id=0,
), seed=3, one_centred=True)
run("gemma3", gemma3, gemma3.model.layers, gemma_like)

for name, parallel, seed in (("neox", True, 4), ("neox-serial", False, 5)):
    neox = build(GPTNeoXConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.5, rotary_emb_base=10000,
        use_parallel_residual=parallel, hidden_act="gelu", layer_norm_eps=1e-5,
        tie_word_embeddings=False, initializer_range=0.1,
    ), seed=seed, one_centred=False)
    run(name, neox, neox.gpt_neox.layers, neox_like)

# Llama 3.1's RoPE scaling with an original context of 32: the head's wavelengths 6.3 (below
# 32 / 4: kept), 20 (between: blended) and 63 and up (above 32 / 1: divided by the factor).
llama3 = build(LlamaConfig(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.1,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
), seed=6, one_centred=False)
run("llama3", llama3, llama3.model.layers, llama_like)

# Mistral: a sliding window (4) shorter than the sequence on every layer, head size times heads
# differing from the width, untied embeddings.
mistral = build(MistralConfig(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4, tie_word_embeddings=False,
    initializer_range=0.1,
), seed=7, one_centred=False)
run("mistral", mistral, mistral.model.layers, llama_like)

# Qwen2: biases on q, k and v (drawn at random) and none on o_proj, no QK norm, the default head
# size (width / heads), untied embeddings, no sliding window.
qwen2 = build(Qwen2Config(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False, use_sliding_window=False,
    initializer_range=0.1,
), seed=8, one_centred=False)
run("qwen2", qwen2, qwen2.model.layers, llama_like)
