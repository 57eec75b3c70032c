//! The matmul floor of a harvest: how fast SmolLM2-135M's forward pass would run if a layer cost
//! only its matrix products, each at the rate libtorch reaches on this machine at the harvest's
//! exact shapes (batch 16 x 128 tokens): the four projections (QKV, output, gate and up, down)
//! and attention's two batched products, of which the causal kernel computes about half.
//! Prints, for f32 and bf16, the products' GFLOP/s and the matmul-bound tokens/s through 16 and
//! through 30 layers; `scripts/bench-harvest` sets the measured rates against them.
//!   cargo run --release -p saescope-activations --example bench_floor [-- BATCH REPEATS]

use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batch: i64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(16);
    let repeats: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    saescope_kernels::keep_freed_memory();
    let _g = tch::no_grad_guard();
    // SmolLM2-135M: d 576, 9 query heads and 3 KV heads of 64, MLP 1536.
    let (t, d, h, hk, dh, dm) = (128i64, 576i64, 9i64, 3i64, 64i64, 1536i64);
    let rows = batch * t;
    let projections = [(d, (h + 2 * hk) * dh), (h * dh, d), (d, 2 * dm), (dm, d)];
    for kind in [Kind::Float, Kind::BFloat16] {
        let o = (kind, Device::Cpu);
        let xs: Vec<(Tensor, Tensor)> = projections
            .iter()
            .map(|&(i, out)| (Tensor::randn([rows, i], o), Tensor::randn([out, i], o)))
            .collect();
        let (q, k) = (
            Tensor::randn([batch, h, t, dh], o),
            Tensor::randn([batch, h, t, dh], o),
        );
        let layer = || {
            for (x, w) in &xs {
                let _ = x.matmul(&w.tr());
            }
            let s = q.matmul(&k.transpose(-2, -1));
            let _ = s.matmul(&k);
        };
        for _ in 0..3 {
            layer();
        }
        let t0 = Instant::now();
        for _ in 0..repeats {
            layer();
        }
        let full = t0.elapsed().as_secs_f64() / repeats as f64;
        // Attention's products at full size were timed; the causal kernel does about half.
        let proj_flops: i64 = projections.iter().map(|&(i, out)| 2 * rows * i * out).sum();
        let attn_flops = 2 * 2 * batch * h * t * t * dh;
        let rate = (proj_flops + attn_flops) as f64 / full;
        let flops_per_token = (proj_flops + attn_flops / 2) as f64 / rows as f64;
        let per_token_layer = flops_per_token / rate;
        println!(
            "{:<5} products {:.0} GFLOP/s, {:.2} MFLOP a token a layer: matmul-bound {:.0} tokens/s through 16 layers, {:.0} through 30",
            if kind == Kind::Float { "f32" } else { "bf16" },
            rate / 1e9,
            flops_per_token / 1e6,
            1.0 / (16.0 * per_token_layer),
            1.0 / (30.0 * per_token_layer),
        );
    }
}
