"""Tiny randomly initialised Hugging Face checkpoints (seeded) and their reference outputs, for
testing saescope's safetensors loading, the Llama rotate-half layout, grouped-query attention
and the GPT-2 family. Writes tests/fixtures/hf/{llama,gpt2}/: config.json, safetensors weights
(the Llama one sharded with an index), and reference.json. Run from the activations/ directory:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.11.0 transformers numpy
    /tmp/ref/bin/python reference/make_hf_fixtures.py
"""
import json
import os

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

torch.manual_seed(0)
IDS = [[5, 17, 99, 3, 42, 8, 127, 64, 1, 33], [7, 7, 7, 120, 2, 90, 11, 0, 56, 23]]


def run(model, blocks, attn_out_proj, mlp_down, out, **save):
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, **save)
    captured = {}
    for L, blk in enumerate(blocks):
        attn_out_proj(blk).register_forward_hook(lambda m, a, o, L=L: captured.__setitem__(f"blocks.{L}.attn.hook_z", a[0]))
        attn_out_proj(blk).register_forward_hook(lambda m, a, o, L=L: captured.__setitem__(f"blocks.{L}.hook_attn_out", o))
        mlp_down(blk).register_forward_hook(lambda m, a, o, L=L: captured.__setitem__(f"blocks.{L}.mlp.hook_post", a[0]))
        mlp_down(blk).register_forward_hook(lambda m, a, o, L=L: captured.__setitem__(f"blocks.{L}.hook_mlp_out", o))
        blk.register_forward_hook(lambda m, a, o, L=L: captured.__setitem__(f"blocks.{L}.hook_resid_post", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        logits = model(torch.tensor(IDS)).logits
    ref = {
        "ids": IDS,
        "logits": logits.tolist(),
        "hooks": {k: v.reshape(len(IDS), len(IDS[0]), -1).tolist() for k, v in sorted(captured.items())},
    }
    with open(f"{out}/reference.json", "w") as f:
        json.dump(ref, f)
    print(out, sorted(os.listdir(out)))


llama = LlamaForCausalLM(LlamaConfig(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
)).eval()
run(llama, llama.model.layers, lambda b: b.self_attn.o_proj, lambda b: b.mlp.down_proj,
    "tests/fixtures/hf/llama", max_shard_size="100KB")

gpt2 = GPT2LMHeadModel(GPT2Config(
    vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, n_inner=None,
    activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
)).eval()
run(gpt2, gpt2.transformer.h, lambda b: b.attn.c_proj, lambda b: b.mlp.c_proj, "tests/fixtures/hf/gpt2")
