//! RMSNorm in one pass per row, for f32 and bf16 activations.
//!
//! A model's norm is computed in f32 and, for a bf16 model, rounded to bf16 before it is scaled
//! by its bf16 gain (as transformers does). As libtorch operations that is a square, a mean,
//! an add, a reciprocal square root and two products, each a pass over the activations, and
//! for bf16 a widening and a narrowing copy besides: six to eight passes, twice a layer. Here
//! each row is read twice from cache and written once, with the same roundings (a bf16 harvest
//! ran 5.6% faster for it on the 2-core development machine); only the sum of squares is added
//! in another order, so an output can differ from libtorch's in its last f32 bits, or by one
//! bf16 unit where the two sums round apart (the tests count them).

use crate::pool::{has_avx512_bw, run_shares, threads};
use crate::view::{Element, elements, elements_mut, on_cpu};
use half::bf16;
use tch::{Kind, Tensor};

/// y = T(T(x · r) · w) with r = 1 / √(mean(x²) + eps) over the last dimension, for x [.., d]
/// contiguous and w [d] of one kind T, f32 or bf16, on the CPU; the arithmetic in f32, each
/// product rounded to T (to nearest even, libtorch's rounding). `None` for anything else (the
/// caller then uses libtorch's operations).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Option<Tensor> {
    if !fits(x, w) {
        return None;
    }
    let out = x.empty_like();
    // SAFETY: `fits` checked the kinds, sizes and layout; `out` is fresh.
    unsafe { run(x, None, w, &out, eps as f32) };
    Some(out)
}

/// The residual stream's sum s = T(x + y) and its RMSNorm as [`rms_norm`] computes it, in one
/// pass: the sum is normed while its row is still in cache, and libtorch's separate add (a
/// pass that reads two tensors and writes one) goes. y must match x in shape, kind and layout.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f64) -> Option<(Tensor, Tensor)> {
    if !fits(x, w) || !on_cpu(y) || y.kind() != x.kind() || y.size() != x.size() {
        return None;
    }
    let (sum, out) = (x.empty_like(), x.empty_like());
    // SAFETY: `fits` checked x and w, the line above y; `sum` and `out` are fresh.
    unsafe { run(x, Some((y, &sum)), w, &out, eps as f32) };
    Some((sum, out))
}

/// Whether the kernels take x and its gain w: contiguous CPU tensors of one kind, f32 or bf16,
/// w as wide as x's last dimension.
fn fits(x: &Tensor, w: &Tensor) -> bool {
    let kind = x.kind();
    let d = x.size().last().copied().unwrap_or(0);
    on_cpu(x)
        && on_cpu(w)
        && matches!(kind, Kind::Float | Kind::BFloat16)
        && w.kind() == kind
        && w.size() == [d]
        && d > 0
}

/// # Safety
/// `x`, `w` and `out` (and the added tensor and the sum's, where given) must be contiguous CPU
/// tensors of one kind, f32 or bf16, all of x's size but w, which is as wide as x's last
/// dimension; `out` and the sum must not be read or written elsewhere meanwhile.
unsafe fn run(x: &Tensor, added: Option<(&Tensor, &Tensor)>, w: &Tensor, out: &Tensor, eps: f32) {
    match x.kind() {
        // SAFETY: guaranteed by the caller.
        Kind::Float => unsafe { run_as::<f32>(x, added, w, out, eps) },
        // SAFETY: as above; half's bf16 has the layout of libtorch's BFloat16.
        _ => unsafe { run_as::<bf16>(x, added, w, out, eps) },
    }
}

/// [`run`] for elements of kind T.
unsafe fn run_as<T: Element>(
    x: &Tensor,
    added: Option<(&Tensor, &Tensor)>,
    w: &Tensor,
    out: &Tensor,
    eps: f32,
) {
    let (n, d) = (x.numel(), w.numel());
    // SAFETY: guaranteed by the caller.
    let (xs, ws, ys) = unsafe {
        (
            elements::<T>(x, n),
            elements::<T>(w, d),
            elements_mut::<T>(out, n),
        )
    };
    // SAFETY: as above.
    let added = added.map(|(a, s)| unsafe { (elements::<T>(a, n), elements_mut::<T>(s, n)) });
    let w: Vec<f32> = ws.iter().map(|v| v.f32()).collect();
    let share = (n / d).div_ceil(threads() * 4).max(16) * d;
    let wide = has_avx512_bw();
    let work = |x: &[T], added: Option<(&[T], &mut [T])>, y: &mut [T]| {
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: `has_avx512_bw` found AVX-512F and AVX-512BW on this CPU.
            return unsafe { rows_avx512(x, added, y, &w, eps) };
        }
        let _ = wide;
        norm_rows(x, added, y, &w, eps);
    };
    match added {
        None => run_shares(xs.chunks(share).zip(ys.chunks_mut(share)), |(x, y)| {
            work(x, None, y)
        }),
        Some((a, s)) => {
            let inputs = xs.chunks(share).zip(a.chunks(share));
            let outputs = s.chunks_mut(share).zip(ys.chunks_mut(share));
            run_shares(inputs.zip(outputs), |((x, a), (s, y))| {
                work(x, Some((a, s)), y)
            })
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows_avx512<T: Element>(
    x: &[T],
    added: Option<(&[T], &mut [T])>,
    y: &mut [T],
    w: &[f32],
    eps: f32,
) {
    norm_rows(x, added, y, w, eps);
}

/// Every row of `x` (rows of w.len()) normed into `y`; with `added` (a, s), the rows of
/// s = T(x + a) are written and normed instead.
#[inline(always)]
fn norm_rows<T: Element>(
    x: &[T],
    added: Option<(&[T], &mut [T])>,
    y: &mut [T],
    w: &[f32],
    eps: f32,
) {
    let d = w.len();
    match added {
        None => {
            for (x, y) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
                norm_row(x, y, w, eps);
            }
        }
        Some((a, s)) => {
            let rows = x.chunks_exact(d).zip(a.chunks_exact(d));
            for ((x, a), (s, y)) in rows.zip(s.chunks_exact_mut(d).zip(y.chunks_exact_mut(d))) {
                for ((s, x), a) in s.iter_mut().zip(x).zip(a) {
                    *s = T::from_f32(x.f32() + a.f32());
                }
                norm_row(s, y, w, eps);
            }
        }
    }
}

/// One row of x normed into y.
#[inline(always)]
fn norm_row<T: Element>(x: &[T], y: &mut [T], w: &[f32], eps: f32) {
    const LANES: usize = 16;
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
    let r = 1.0 / (ss / w.len() as f32 + eps).sqrt();
    for ((o, v), g) in y.iter_mut().zip(x).zip(w) {
        *o = T::from_f32(T::from_f32(v.f32() * r).f32() * g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::{assert_within_f32_units, assert_within_one_bf16_unit};
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
            let got = rms_norm(&x, &w, 1e-5).expect("taken");
            assert_within_one_bf16_unit(&got, &want, 0.02, &format!("rows {rows} d {d}"));
        }
    }

    /// f32 against libtorch's `rms_norm` with its gain: a few units in the last place apart.
    #[test]
    fn f32_matches_libtorch_to_float_rounding() {
        tch::manual_seed(32);
        for (rows, d) in [(1, 16), (37, 576), (5, 70), (3, 7)] {
            let x = Tensor::randn([rows, d], (Kind::Float, Device::Cpu)) * 3.0;
            let w = Tensor::randn([d], (Kind::Float, Device::Cpu)) + 1.0;
            let want = x.rms_norm([d], Some(&w), 1e-5);
            let got = rms_norm(&x, &w, 1e-5).expect("taken");
            assert_within_f32_units(&got, &want, 4.0, &format!("rows {rows} d {d}"));
        }
    }

    /// The fused sum is libtorch's add exactly, and its norm the kernel's norm of that sum.
    #[test]
    fn the_sum_and_its_norm_match_an_add_then_the_norm() {
        tch::manual_seed(33);
        for kind in [Kind::Float, Kind::BFloat16] {
            let x = (Tensor::randn([4, 7, 576], (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
            let a = (Tensor::randn([4, 7, 576], (Kind::Float, Device::Cpu)) * 2.0).to_kind(kind);
            let w = (Tensor::randn([576], (Kind::Float, Device::Cpu)) + 1.0).to_kind(kind);
            let (sum, normed) = add_rms_norm(&x, &a, &w, 1e-5).expect("taken");
            let want = &x + &a;
            assert!(sum.equal(&want), "{kind:?}: the sum");
            let norm = rms_norm(&want, &w, 1e-5).expect("taken");
            assert!(normed.equal(&norm), "{kind:?}: the norm");
        }
        let x = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
        assert!(add_rms_norm(&x, &x.tr(), &x.get(0), 1e-5).is_none());
        let h = x.to_kind(Kind::BFloat16);
        assert!(add_rms_norm(&x, &h, &x.get(0), 1e-5).is_none());
    }

    #[test]
    fn keeps_nan_and_refuses_what_it_cannot_take() {
        let x = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
        let nan = x.to_kind(Kind::BFloat16);
        let _ = nan.get(0).get(1).fill_(f64::NAN);
        let y = rms_norm(&nan, &nan.get(1), 1e-5).expect("taken");
        assert!(
            y.get(0).isnan().all().int64_value(&[]) == 1,
            "a NaN spreads over its row"
        );
        assert!(
            y.get(1).isnan().any().int64_value(&[]) == 0,
            "and no further"
        );
        assert!(rms_norm(&x, &nan.get(0), 1e-5).is_none(), "kinds apart");
        let none = Tensor::zeros([0, 4], (Kind::Float, Device::Cpu));
        assert_eq!(
            rms_norm(&none, &x.get(0), 1e-5).expect("taken").size(),
            [0, 4]
        );
        let (sum, _) = add_rms_norm(&none, &none, &x.get(0), 1e-5).expect("taken");
        assert_eq!(sum.size(), [0, 4], "an empty batch");
        let double = x.to_kind(Kind::Double);
        assert!(rms_norm(&double, &double.get(0), 1e-5).is_none());
        let h = x.to_kind(Kind::BFloat16);
        assert!(rms_norm(&h, &h.get(0).narrow(0, 0, 3), 1e-5).is_none());
        assert!(rms_norm(&h.tr(), &h.get(0).narrow(0, 0, 2), 1e-5).is_none());
    }
}
