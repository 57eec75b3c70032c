"""A Hugging Face Llama checkpoint with SmolLM2-135M's shapes and random weights, for throughput
benchmarks where the bundled GGUF cannot travel (scripts/gpu-run makes one on the GPU machine,
where transformers loads it beside saescope). A harvest's speed does not depend on the weights'
values, and both sides read the same files. Weights are normal with std 0.02 (transformers'
initialiser), norms are ones; stored as f32 safetensors with a config.json. Needs numpy and
safetensors only.

    python make_random_llama.py OUT_DIR [--layers 30] [--seed 0]
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--layers", type=int, default=30)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()

d, mlp, heads, kv_heads, head_dim, vocab = 576, 1536, 9, 3, 64, 49152
config = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": d,
    "intermediate_size": mlp,
    "num_hidden_layers": a.layers,
    "num_attention_heads": heads,
    "num_key_value_heads": kv_heads,
    "head_dim": head_dim,
    "vocab_size": vocab,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}
rng = np.random.default_rng(a.seed)


def normal(*shape):
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)


w = {"model.embed_tokens.weight": normal(vocab, d), "model.norm.weight": np.ones(d, np.float32)}
for i in range(a.layers):
    b = f"model.layers.{i}."
    w[b + "self_attn.q_proj.weight"] = normal(heads * head_dim, d)
    w[b + "self_attn.k_proj.weight"] = normal(kv_heads * head_dim, d)
    w[b + "self_attn.v_proj.weight"] = normal(kv_heads * head_dim, d)
    w[b + "self_attn.o_proj.weight"] = normal(d, heads * head_dim)
    w[b + "mlp.gate_proj.weight"] = normal(mlp, d)
    w[b + "mlp.up_proj.weight"] = normal(mlp, d)
    w[b + "mlp.down_proj.weight"] = normal(d, mlp)
    w[b + "input_layernorm.weight"] = np.ones(d, np.float32)
    w[b + "post_attention_layernorm.weight"] = np.ones(d, np.float32)
os.makedirs(a.out, exist_ok=True)
save_file(w, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
with open(os.path.join(a.out, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
