//! The SwiGLU MLP's gate: silu(gate) ⊙ up in one pass.
//!
//! The Llama family computes its MLP's hidden state from one product with [W_gate; W_up]:
//! `silu(g) * u` over the two halves of each row. As libtorch operations that is a silu that
//! writes a new tensor and a product that reads it back, and for bf16 each widens to f32 and
//! narrows again. Here each row is read once and the result written once, with the roundings
//! of those two operations: silu in f32 as g / (1 + e^-g) (rounded to bf16 for a bf16 model),
//! then the product (rounded again). The exponential is a polynomial of its own, within an
//! f32 unit or two of libtorch's, so an f32 output can differ from libtorch's in its last bits
//! and a bf16 one, rarely, by one unit (the tests bound both).

use crate::pool::{has_avx512_bw, has_fma, run_shares, threads};
use crate::view::{Element, elements, elements_mut, on_cpu};
use half::bf16;
use tch::{Kind, Tensor};

/// silu(x[.., :d]) ⊙ x[.., d:] for x [.., 2d] contiguous f32 or bf16 on the CPU: [.., d] of
/// x's kind. `None` for anything else (the caller then uses libtorch's operations).
pub fn silu_mul(x: &Tensor) -> Option<Tensor> {
    let width = *x.size().last()? as usize;
    let kind = x.kind();
    if !on_cpu(x)
        || width == 0
        || !width.is_multiple_of(2)
        || !matches!(kind, Kind::Float | Kind::BFloat16)
    {
        return None;
    }
    let d = width / 2;
    let mut shape = x.size();
    *shape.last_mut()? = d as i64;
    let out = Tensor::empty(shape.as_slice(), (kind, x.device()));
    let rows = x.numel() / width;
    let share = rows.div_ceil(threads() * 4).max(8);
    match kind {
        // SAFETY: contiguous CPU tensors of this kind and size (checked above); x is only
        // read, and `out` is fresh and written only through this slice.
        Kind::Float => unsafe { run::<f32>(x, &out, rows, d, share) },
        // SAFETY: as above; half's bf16 has the layout of libtorch's BFloat16.
        _ => unsafe { run::<bf16>(x, &out, rows, d, share) },
    }
    Some(out)
}

/// # Safety
/// `x` and `out` must be contiguous CPU tensors of T's kind with `rows * 2d` and `rows * d`
/// elements; `out` must not be read or written elsewhere meanwhile.
unsafe fn run<T: Element>(x: &Tensor, out: &Tensor, rows: usize, d: usize, share: usize) {
    // SAFETY: guaranteed by the caller.
    let (xs, ys) = unsafe {
        (
            elements::<T>(x, rows * 2 * d),
            elements_mut::<T>(out, rows * d),
        )
    };
    let (wide, fma) = (has_avx512_bw(), has_fma());
    run_shares(
        xs.chunks(share * 2 * d).zip(ys.chunks_mut(share * d)),
        |(x, y)| {
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: `has_avx512_bw` found AVX-512F and AVX-512BW on this CPU.
                return unsafe { rows_avx512(x, y, d) };
            } else if fma {
                // SAFETY: `has_fma` found AVX2 and FMA on this CPU.
                return unsafe { rows_avx2(x, y, d) };
            }
            let _ = (wide, fma);
            gate_rows::<T, false>(x, y, d);
        },
    );
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows_avx512<T: Element>(x: &[T], y: &mut [T], d: usize) {
    gate_rows::<T, true>(x, y, d);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2<T: Element>(x: &[T], y: &mut [T], d: usize) {
    gate_rows::<T, true>(x, y, d);
}

/// With `FUSED` the exponential's polynomial steps are fused multiply-adds (only where the CPU
/// has them: in software they would be slow), which changes its last bits, not its accuracy.
#[inline(always)]
fn gate_rows<T: Element, const FUSED: bool>(x: &[T], y: &mut [T], d: usize) {
    for (x, y) in x.chunks_exact(2 * d).zip(y.chunks_exact_mut(d)) {
        let (gate, up) = x.split_at(d);
        for ((o, g), u) in y.iter_mut().zip(gate).zip(up) {
            let s = T::from_f32(silu::<FUSED>(g.f32()));
            *o = T::from_f32(s.f32() * u.f32());
        }
    }
}

/// silu(g) = g / (1 + e^-g), as libtorch's vectorised kernel writes it.
#[inline(always)]
fn silu<const FUSED: bool>(g: f32) -> f32 {
    g / (1.0 + exp::<FUSED>(-g))
}

/// e^x in f32 without branches, so that it vectorises: x = n ln 2 + r with |r| ≤ ln 2 / 2,
/// e^r by a degree-7 polynomial (Cephes' `expf` coefficients), times 2^n built from its
/// exponent bits. n is rounded by adding and subtracting 1.5 · 2^23, which leaves it in the
/// low bits of the sum (a rounding the vectoriser keeps in vector registers, where
/// `round_ties_even` and `as i32` went through scalar code). Within about one f32 unit of the
/// true value up to 88.72 and +∞ past it; a NaN stays a NaN. Below −86.6 it gives e^−86.6
/// (2.4e-38) instead of a denormal: all silu needs there is that 1 + e^x is 1.
#[inline(always)]
fn exp<const FUSED: bool>(x: f32) -> f32 {
    const HI: f32 = 88.722_84; // ln(f32::MAX)
    const LO: f32 = -86.6;
    const LN2_HI: f32 = 0.693_359_4; // ln 2 split so that n · LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUNDER: f32 = 12_582_912.0; // 1.5 · 2^23: the sum's last bit is worth 1
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    let step = |a: f32, b: f32, c: f32| if FUSED { a.mul_add(b, c) } else { a * b + c };
    let c = x.clamp(LO, HI); // keeps a NaN, which then passes through every step
    let shifted = step(c, std::f32::consts::LOG2_E, ROUNDER);
    let n = shifted - ROUNDER; // -125 ..= 128, an integer
    let r = (c - n * LN2_HI) - n * LN2_LO;
    let p = P[1..].iter().fold(P[0], |p, &k| step(p, r, k));
    let er = step(p, r * r, r + 1.0);
    // 2^n as 2^(n-1) · 2, so that n = 128 (just under f32::MAX) stays finite; n - 1 + 127 is
    // the difference of the sums' bits plus 126.
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUNDER.to_bits())
        .wrapping_add(126);
    let v = er * f32::from_bits(biased << 23) * 2.0;
    if x > HI { f32::INFINITY } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::{assert_within_f32_units, assert_within_one_bf16_unit};
    use tch::Device;

    /// The exponential against f64's over its whole finite range and at its edges, with and
    /// without fused steps.
    #[test]
    fn exp_is_within_two_units_of_the_true_value() {
        fn check<const FUSED: bool>() {
            let mut worst = 0f64;
            let mut x = -86.5f32;
            while x < 88.7 {
                let (got, want) = (exp::<FUSED>(x) as f64, (x as f64).exp());
                worst = worst.max(((got - want) / want).abs());
                x += 0.0137;
            }
            assert!(worst < 2.5 * f32::EPSILON as f64, "relative error {worst}");
            assert_eq!(exp::<FUSED>(89.0), f32::INFINITY);
            assert_eq!(exp::<FUSED>(f32::INFINITY), f32::INFINITY);
            assert!(exp::<FUSED>(-100.0) < 2.5e-38);
            assert!(exp::<FUSED>(f32::NEG_INFINITY) < 2.5e-38);
            assert!(exp::<FUSED>(f32::NAN).is_nan());
            assert_eq!(exp::<FUSED>(0.0), 1.0);
            assert!(exp::<FUSED>(88.72).is_finite());
        }
        check::<false>();
        check::<true>();
    }

    fn reference(x: &Tensor) -> Tensor {
        let d = x.size().last().copied().expect("dims") / 2;
        x.narrow(-1, 0, d).silu() * x.narrow(-1, d, d)
    }

    #[test]
    fn f32_matches_libtorch_to_float_rounding() {
        tch::manual_seed(5);
        for (rows, d) in [(1, 8), (37, 1536), (3, 5)] {
            let x = Tensor::randn([rows, 2 * d], (Kind::Float, Device::Cpu)) * 4.0;
            let got = silu_mul(&x).expect("taken");
            let want = reference(&x);
            assert_eq!(got.size(), want.size());
            assert_within_f32_units(&got, &want, 4.0, &format!("rows {rows} d {d}"));
        }
    }

    /// One bf16 unit where the f32 silu lands on the other side of a rounding boundary; rare.
    #[test]
    fn bf16_matches_libtorch_to_one_unit_rarely() {
        tch::manual_seed(6);
        let x = (Tensor::randn([64, 2 * 1536], (Kind::Float, Device::Cpu)) * 3.0)
            .to_kind(Kind::BFloat16)
            .view([4, 16, 2 * 1536]);
        let got = silu_mul(&x).expect("taken");
        let want = reference(&x);
        assert_eq!(got.size(), vec![4, 16, 1536]);
        assert_within_one_bf16_unit(&got, &want, 0.002, "bf16");
    }

    #[test]
    fn keeps_nan_and_infinities_and_refuses_what_it_cannot_take() {
        let x = Tensor::from_slice(&[
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -100.0,
            2.0,
            2.0,
            2.0,
            3.0,
        ])
        .view([1, 8]);
        let y = Vec::<f32>::try_from(silu_mul(&x).expect("taken").view([-1])).expect("f32");
        let want = Vec::<f32>::try_from(reference(&x).view([-1])).expect("f32");
        for (i, (y, w)) in y.iter().zip(&want).enumerate() {
            assert!(y == w || (y.is_nan() && w.is_nan()), "{i}: {y} against {w}");
        }
        assert!(y[0].is_nan() && y[1] == f32::INFINITY && y[3] == 0.0);
        assert!(silu_mul(&x.narrow(1, 0, 7)).is_none(), "an odd width");
        assert!(silu_mul(&x.to_kind(Kind::Double)).is_none());
        let none = Tensor::zeros([0, 8], (Kind::BFloat16, Device::Cpu));
        assert_eq!(
            silu_mul(&none).expect("taken").size(),
            [0, 4],
            "an empty batch"
        );
        assert!(silu_mul(&x.view([2, 4]).tr()).is_none(), "not contiguous");
    }
}
