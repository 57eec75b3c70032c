//! x Wᵀ for the models' linear layers and the dictionaries' encoders, with a CPU path of
//! saescope's own for the few-row products that decoding runs.
//!
//! A decode step multiplies one row per text by every weight matrix (and, when steering, by a
//! dictionary's encoder): a matrix-vector product
//! whose speed is the speed weights stream from memory. libtorch sends these to its BLAS, which
//! on the 2-core AMD machine saescope is developed on reads f32 weights at 7–12 GB/s and bf16
//! weights at 3–5 GB/s against 28 GB/s for a plain copy; the loop below, split over the same
//! number of threads, reads both at 20–29 GB/s (decode figures in the README's generation
//! benchmark).
//! No well-kept crate covers it: `gemm` has no bf16 and reads the largest matrix (the
//! unembedding) at two thirds of that speed. Past a handful of rows the products turn
//! compute-bound and libtorch's GEMM is the better kernel, so everything else goes there.
//!
//! Each output is one dot product accumulated in f32 over 16 lanes; a bf16 result is rounded
//! to nearest-even, as libtorch rounds. Results match libtorch's to float rounding, not bit for
//! bit (libtorch itself differs from one GEMM shape to another).

use crate::pool::{has_fma, run_shares, threads};
use half::bf16;
use tch::{Device, Kind, Tensor};

/// x [..., in] times w [out, in] transposed: [..., out].
pub fn linear(x: &Tensor, w: &Tensor) -> Tensor {
    match few_rows(x, w) {
        Some(rows) => small_rows(x, w, rows),
        None => x.matmul(&w.tr()),
    }
}

/// x [rows, in] times w [out, in] transposed, plus b \[out\]: as [`linear`], and libtorch's fused
/// `addmm` where the own kernel does not apply (so larger products round exactly as before).
pub fn affine(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    match few_rows(x, w) {
        Some(rows) => small_rows(x, w, rows) + b,
        None => b.addmm(x, &w.tr()),
    }
}

/// The most rows the own kernel takes: measured on SmolLM2-135M's shapes, it stays ahead of
/// libtorch's GEMM up to 8 rows in both kinds; at 16, libtorch's f32 GEMM wins once its
/// OpenMP threads, still spinning from the last op, compete with the kernel's.
fn max_rows(kind: Kind) -> Option<i64> {
    matches!(kind, Kind::Float | Kind::BFloat16).then_some(8)
}

/// The number of rows of x when the own kernel should take the product.
fn few_rows(x: &Tensor, w: &Tensor) -> Option<i64> {
    let limit = max_rows(w.kind())?;
    let d_in = *w.size().get(1)?;
    let suitable = w.dim() == 2
        && w.device() == Device::Cpu
        && x.device() == Device::Cpu
        && x.kind() == w.kind()
        && w.is_contiguous()
        && x.size().last() == Some(&d_in)
        && !x.requires_grad()
        && !w.requires_grad();
    let rows = if suitable { x.numel() as i64 / d_in } else { 0 };
    (suitable && rows >= 1 && rows <= limit).then_some(rows)
}

/// What a weight element becomes in the sum.
trait Weight: Copy + Send + Sync {
    fn f32(self) -> f32;
}

impl Weight for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Weight for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        // bf16 is the top half of an f32: widening is a shift, which vectorises.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

fn small_rows(x: &Tensor, w: &Tensor, rows: i64) -> Tensor {
    let (d_out, d_in) = w.size2().expect("two-dimensional weight");
    let xs: Vec<f32> = Vec::try_from(x.reshape([-1]).to_kind(Kind::Float)).expect("x as f32");
    let n = (d_out * d_in) as usize;
    let out = match w.kind() {
        // SAFETY: w is a contiguous CPU tensor of n elements of this kind (checked by
        // `few_rows`), borrowed for the whole call; model weights are never written in place.
        Kind::Float => unsafe { products(weights::<f32>(w, n), &xs, d_in as usize) },
        // SAFETY: as above; half's bf16 has the layout of libtorch's BFloat16 (one u16).
        Kind::BFloat16 => unsafe { products(weights::<bf16>(w, n), &xs, d_in as usize) },
        k => unreachable!("no own kernel for {k:?}"),
    };
    let mut shape = x.size();
    *shape.last_mut().expect("x has dimensions") = d_out;
    // `out` is [out, rows]; one small transposing copy gives [rows, out].
    Tensor::from_slice(&out)
        .view([d_out, rows])
        .tr()
        .to_kind(w.kind())
        .contiguous()
        .view(shape.as_slice())
}

/// The weight's elements as a slice.
///
/// # Safety
/// `w` must be a contiguous CPU tensor of `n` elements whose kind has T's layout, and must not
/// be written while the slice lives.
unsafe fn weights<T>(w: &Tensor, n: usize) -> &[T] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(w.data_ptr() as *const T, n) }
}

/// All dot products of the weight rows with the rows of x (each `d_in` long), as [out, rows].
/// The weight rows are cut into one even share per thread, so exactly as many threads run as
/// libtorch is allowed.
fn products<W: Weight>(w: &[W], xs: &[f32], d_in: usize) -> Vec<f32> {
    let rows = xs.len() / d_in;
    let d_out = w.len() / d_in;
    let mut out = vec![0f32; d_out * rows];
    let fma = has_fma();
    let share = d_out.div_ceil(threads()).max(1);
    let shares = out.chunks_mut(share * rows).zip(w.chunks(share * d_in));
    run_shares(shares, |(out, w)| block(w, xs, d_in, out, fma));
    out
}

/// One thread's share of the outputs, [share, rows], in blocks of weight rows small enough to
/// stay in cache while every row of x passes over them: the weights are read from memory once.
fn block<W: Weight>(w: &[W], xs: &[f32], d_in: usize, out: &mut [f32], fma: bool) {
    let rows = xs.len() / d_in;
    for (w, out) in w
        .chunks(CACHED_ROWS * d_in)
        .zip(out.chunks_mut(CACHED_ROWS * rows))
    {
        for (k, x) in xs.chunks_exact(d_in).enumerate() {
            for (r, wr) in w.chunks_exact(d_in).enumerate() {
                out[r * rows + k] = dot(wr, x, fma);
            }
        }
    }
}

/// Weight rows per cache block: about 150 KB of f32 weights for a 576-wide model, well inside
/// a core's L2.
const CACHED_ROWS: usize = 64;

#[inline(always)]
fn dot<W: Weight>(w: &[W], x: &[f32], fma: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: `has_fma` found AVX2 and FMA on this CPU.
        return unsafe { dot_avx2(w, x) };
    }
    let _ = fma;
    dot_lanes::<W, false>(w, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<W: Weight>(w: &[W], x: &[f32]) -> f32 {
    dot_lanes::<W, true>(w, x)
}

/// Σ w·x over 16 independent f32 accumulators, which the compiler turns into vector registers;
/// with `FUSED` each step is a fused multiply-add (only where the CPU has one: in software it
/// would be slow).
#[inline(always)]
fn dot_lanes<W: Weight, const FUSED: bool>(w: &[W], x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (wb, wt) = w.split_at(w.len() / LANES * LANES);
    let (xb, xt) = x.split_at(wb.len());
    for (wc, xc) in wb.chunks_exact(LANES).zip(xb.chunks_exact(LANES)) {
        for j in 0..LANES {
            acc[j] = if FUSED {
                wc[j].f32().mul_add(xc[j], acc[j])
            } else {
                acc[j] + wc[j].f32() * xc[j]
            };
        }
    }
    let tail: f32 = wt.iter().zip(xt).map(|(w, x)| w.f32() * x).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The own kernel against libtorch's matmul, for every row count it takes and a few it
    /// does not, with widths that leave a tail past the 16 lanes.
    #[test]
    fn matches_libtorch_matmul() {
        tch::manual_seed(7);
        for kind in [Kind::Float, Kind::BFloat16] {
            for (d_out, d_in) in [(200, 72), (130, 37), (64, 16)] {
                let w = Tensor::randn([d_out, d_in], (Kind::Float, Device::Cpu)).to_kind(kind);
                for rows in [1, 2, 3, 8, 9] {
                    let x =
                        Tensor::randn([rows, 1, d_in], (Kind::Float, Device::Cpu)).to_kind(kind);
                    let own = linear(&x, &w);
                    assert_eq!(own.size(), vec![rows, 1, d_out]);
                    assert_eq!(own.kind(), kind);
                    let reference = x
                        .to_kind(Kind::Double)
                        .matmul(&w.to_kind(Kind::Double).tr());
                    let err = (own.to_kind(Kind::Double) - &reference)
                        .abs()
                        .max()
                        .double_value(&[]);
                    let scale = reference.abs().max().double_value(&[]);
                    // f32 sums of ~70 terms; bf16 adds the output's rounding (2^-8 relative).
                    let bound = if kind == Kind::Float { 1e-5 } else { 8e-3 };
                    assert!(
                        err <= bound * scale,
                        "{kind:?} {d_out}x{d_in} rows {rows}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn takes_only_what_it_should() {
        let w = Tensor::zeros([8, 4], (Kind::Float, Device::Cpu));
        let x = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
        assert_eq!(few_rows(&x, &w), Some(2));
        assert_eq!(
            few_rows(&Tensor::zeros([9, 4], (Kind::Float, Device::Cpu)), &w),
            None
        );
        assert_eq!(
            few_rows(&x, &w.tr()),
            None,
            "a transposed view is not [out, in]"
        );
        assert_eq!(
            few_rows(&x.to_kind(Kind::Double), &w.to_kind(Kind::Double)),
            None
        );
        let wb = w.to_kind(Kind::BFloat16);
        assert_eq!(
            few_rows(&Tensor::zeros([9, 4], (Kind::BFloat16, Device::Cpu)), &wb),
            None
        );
    }
}
