//! The elementwise work of a Llama-family layer, saescope's kernels against the libtorch
//! operations they replace, at SmolLM2-135M's shapes for a harvest batch (16 x 128 tokens,
//! d 576, 9 query and 3 key/value heads of 64, MLP 1,536), in f32 and bf16, on libtorch's
//! threads:
//!   cargo run --release -p saescope-kernels --example bench_layer_ops [-- REPEATS]
//! Each figure is the mean of REPEATS calls (default 50) after a warm-up call, in ms.

use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn ms(repeats: usize, mut f: impl FnMut() -> Tensor) -> f64 {
    let _ = f();
    let t = Instant::now();
    for _ in 0..repeats {
        let _ = f();
    }
    t.elapsed().as_secs_f64() * 1e3 / repeats as f64
}

fn main() {
    let repeats: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let (b, t, d, h, hk, dh, dm) = (16, 128, 576, 9, 3, 64, 1536);
    println!(
        "layer operations: {b} x {t} tokens, d {d}, heads {h}+{hk}x{dh}, MLP {dm}, {} threads, {repeats} calls each",
        tch::get_num_threads()
    );
    println!(
        "{:<22} {:<5} {:>10} {:>10} {:>7}",
        "operation", "kind", "libtorch", "saescope", "ratio"
    );
    for kind in [Kind::Float, Kind::BFloat16] {
        let opts = (Kind::Float, Device::Cpu);
        let x = (Tensor::randn([b, t, d], opts) * 2.0).to_kind(kind);
        let y = Tensor::randn([b, t, d], opts).to_kind(kind);
        let w = (Tensor::randn([d], opts) + 1.0).to_kind(kind);
        let qkv = Tensor::randn([b, t, h + 2 * hk, dh], opts).to_kind(kind);
        let qk = qkv.narrow(2, 0, h + hk);
        let angles = Tensor::rand([t, 1, dh / 2], opts) * 6.0;
        let cos = Tensor::cat(&[angles.cos(), angles.cos()], -1).to_kind(kind);
        let sin = Tensor::cat(&[-angles.sin(), angles.sin()], -1).to_kind(kind);
        let gate_up = (Tensor::randn([b, t, 2 * dm], opts) * 3.0).to_kind(kind);
        let norm = |x: &Tensor| {
            let normed = x.to_kind(Kind::Float).rms_norm([d], None::<Tensor>, 1e-5);
            normed.to_kind(kind) * &w
        };
        let rows: [(&str, f64, f64); 4] = [
            (
                "RMSNorm",
                ms(repeats, || norm(&x)),
                ms(repeats, || {
                    saescope_kernels::rms_norm(&x, &w, 1e-5).expect("taken")
                }),
            ),
            (
                "residual add, RMSNorm",
                ms(repeats, || norm(&(&x + &y))),
                ms(repeats, || {
                    saescope_kernels::add_rms_norm(&x, &y, &w, 1e-5)
                        .expect("taken")
                        .1
                }),
            ),
            (
                "RoPE on Q and K",
                ms(repeats, || {
                    let half = dh / 2;
                    let swapped =
                        Tensor::cat(&[qk.narrow(-1, half, half), qk.narrow(-1, 0, half)], -1);
                    let mut turned = &qk * &cos;
                    let _ = turned.addcmul_(&swapped, &sin);
                    turned
                }),
                ms(repeats, || {
                    saescope_kernels::rotate_half(&qk, &cos, &sin).expect("taken")
                }),
            ),
            (
                "SwiGLU gate",
                ms(repeats, || {
                    gate_up.narrow(-1, 0, dm).silu() * gate_up.narrow(-1, dm, dm)
                }),
                ms(repeats, || {
                    saescope_kernels::silu_mul(&gate_up).expect("taken")
                }),
            ),
        ];
        let name = if kind == Kind::Float { "f32" } else { "bf16" };
        for (op, torch, own) in rows {
            println!(
                "{op:<22} {name:<5} {torch:>10.3} {own:>10.3} {:>6.2}x",
                torch / own
            );
        }
    }
}
