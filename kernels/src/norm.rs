//! RMSNorm of bf16 activations in one pass per row.
//!
//! A bf16 model's norm is computed in f32, rounded to bf16, then scaled by its bf16 gain (as
//! transformers does). As libtorch operations that is a widening copy, libtorch's composite
//! `rms_norm` (a square, a mean, an add, a reciprocal square root, a product), a narrowing
//! copy and the gain's product: eight passes over the activations, twice a layer. Here each row
//! is read twice from cache and written once, with the same roundings (a bf16 harvest ran 5.6%
//! faster for it on the 2-core development machine); only the sum of squares is added in
//! another order, so an output can differ from libtorch's by one bf16 unit in the last place
//! where the two sums round apart (the tests count them).

use crate::pool::{has_avx512, run_shares, threads};
use crate::view::{Value, elements, elements_mut, on_cpu};
use half::bf16;
use tch::{Kind, Tensor};

/// y = bf16(bf16(x · r) · w) with r = 1 / √(mean(x²) + eps) over the last dimension, x and w
/// bf16 (x [.., d] contiguous, w [d]); the products in f32, rounded to nearest even (`half`'s
/// conversion, libtorch's rounding). `None`
/// for anything else (the caller then uses libtorch's operations).
pub fn rms_norm_bf16(x: &Tensor, w: &Tensor, eps: f64) -> Option<Tensor> {
    let d = *x.size().last()? as usize;
    let fits = on_cpu(x)
        && on_cpu(w)
        && x.kind() == Kind::BFloat16
        && w.kind() == Kind::BFloat16
        && w.size() == [d as i64]
        && d > 0;
    if !fits {
        return None;
    }
    let n = x.numel();
    let out = x.empty_like();
    // SAFETY: contiguous bf16 CPU tensors of these sizes (checked above); x and w are only
    // read, and `out` is fresh and written only through this slice.
    let (xs, ws, ys) = unsafe {
        (
            elements::<bf16>(x, n),
            elements::<bf16>(w, d),
            elements_mut::<bf16>(&out, n),
        )
    };
    let w: Vec<f32> = ws.iter().map(|v| v.f32()).collect();
    let eps = eps as f32;
    let rows = n / d;
    let share = rows.div_ceil(threads() * 4).max(16) * d;
    let wide = has_avx512();
    run_shares(xs.chunks(share).zip(ys.chunks_mut(share)), |(x, y)| {
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: `has_avx512` found AVX-512F on this CPU.
            unsafe { rows_avx512(x, y, &w, eps) };
            return;
        }
        let _ = wide;
        norm_rows(x, y, &w, eps);
    });
    Some(out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows_avx512(x: &[bf16], y: &mut [bf16], w: &[f32], eps: f32) {
    norm_rows(x, y, w, eps);
}

/// Every row of `x` (rows of w.len()) normed into `y`.
#[inline(always)]
fn norm_rows(x: &[bf16], y: &mut [bf16], w: &[f32], eps: f32) {
    const LANES: usize = 16;
    let d = w.len();
    for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let mut acc = [0f32; LANES];
        let blocks = x.chunks_exact(LANES);
        let tail = blocks.remainder();
        for b in blocks {
            for l in 0..LANES {
                let v = b[l].f32();
                acc[l] += v * v;
            }
        }
        let mut ss: f32 = acc.iter().sum();
        for v in tail {
            ss += v.f32() * v.f32();
        }
        let r = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, v), g) in y.iter_mut().zip(x).zip(w) {
            *o = bf16::from_f32(bf16::from_f32(v.f32() * r).f32() * g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Against libtorch's operations: in f32, rounded to bf16, times the gain. Outputs may
    /// differ by one bf16 unit where the sums of squares round apart; count them.
    #[test]
    fn matches_libtorch_to_one_unit_in_the_last_place() {
        tch::manual_seed(31);
        for (rows, d) in [(1, 16), (37, 576), (5, 70), (3, 7)] {
            let x = (Tensor::randn([rows, d], (Kind::Float, Device::Cpu)) * 3.0)
                .to_kind(Kind::BFloat16);
            let w = (Tensor::randn([d], (Kind::Float, Device::Cpu)) + 1.0).to_kind(Kind::BFloat16);
            let want = x
                .to_kind(Kind::Float)
                .rms_norm([d], None::<Tensor>, 1e-5)
                .to_kind(Kind::BFloat16)
                * &w;
            let got = rms_norm_bf16(&x, &w, 1e-5).expect("taken");
            let (g, t) = (got.to_kind(Kind::Float), want.to_kind(Kind::Float));
            // One bf16 unit at |v| is 2^(exponent − 7); allow it, and count how often.
            let unit = t.abs().clamp_min(1e-30).log2().floor().exp2() / 128.0;
            let apart = (&g - &t).abs();
            assert!(
                apart.le_tensor(&(unit * 1.0001)).all().int64_value(&[]) == 1,
                "rows {rows} d {d}: more than one unit apart"
            );
            let differ = apart.gt(0.0).to_kind(Kind::Float).mean(Kind::Float);
            assert!(
                differ.double_value(&[]) < 0.02,
                "rows {rows} d {d}: {differ:?}"
            );
        }
    }

    #[test]
    fn keeps_nan_and_refuses_what_it_cannot_take() {
        let x = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
        let nan = x.to_kind(Kind::BFloat16);
        let _ = nan.get(0).get(1).fill_(f64::NAN);
        let y = rms_norm_bf16(&nan, &nan.get(1), 1e-5).expect("taken");
        assert!(
            y.get(0).isnan().all().int64_value(&[]) == 1,
            "a NaN spreads over its row"
        );
        assert!(
            y.get(1).isnan().any().int64_value(&[]) == 0,
            "and no further"
        );
        assert!(rms_norm_bf16(&x, &x.get(0), 1e-5).is_none());
        let h = x.to_kind(Kind::BFloat16);
        assert!(rms_norm_bf16(&h, &h.get(0).narrow(0, 0, 3), 1e-5).is_none());
        assert!(rms_norm_bf16(&h.tr(), &h.get(0).narrow(0, 0, 2), 1e-5).is_none());
    }
}
