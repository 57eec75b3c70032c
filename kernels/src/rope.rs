//! Rotary position embeddings in one pass, read straight from the QKV product.
//!
//! With a and b the halves of a head, rotate-half RoPE turns (a, b) into
//! (a cos − b sin, b cos + a sin). As libtorch operations that is a copy that swaps the halves
//! (of a strided view of Q and K inside the QKV product, so a gathering copy), a product and a
//! fused multiply-add: three passes that each write a tensor. Here each token's heads are read
//! once from the QKV product and written once, with libtorch's roundings: x·cos rounded to the
//! model's kind, then the swapped half's product with sin added, in one rounding where the CPU
//! has FMA (as libtorch's vectorised loop adds it), and rounded to the kind again. The results
//! equal libtorch's but where its loop takes another path (a tail shorter than a vector).

use crate::pool::{has_avx512_bw, has_fma, run_shares, threads};
use crate::view::{Element, elements, elements_mut, on_cpu};
use half::bf16;
use tch::{Device, Kind, Tensor};

/// x [batch, pos, heads, d_head] (each token's heads contiguous, the token's place anywhere:
/// Q and K as a view of the QKV product) rotated by tables `cos` and `sin` of x's kind, of
/// shape [pos, 1, d_head] or [batch, pos, 1, d_head] and contiguous, whose halves hold
/// (cos, cos) and (−sin, sin): a new contiguous [batch, pos, heads, d_head] of
/// T(T(x · cos) + swap(x) · sin), with swap exchanging the halves of each head. f32 and bf16
/// on the CPU; `None` for anything else (the caller then uses libtorch's operations).
pub fn rotate_half(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Option<Tensor> {
    let [b, t, heads, dh] = x.size()[..] else {
        return None;
    };
    let [s0, s1, s2, s3] = x.stride()[..] else {
        return None;
    };
    let kind = x.kind();
    let table_ok = |c: &Tensor| {
        c.kind() == kind && on_cpu(c) && (c.size() == [t, 1, dh] || c.size() == [b, t, 1, dh])
    };
    let fits = x.device() == Device::Cpu
        && !x.requires_grad()
        && matches!(kind, Kind::Float | Kind::BFloat16)
        && s3 == 1
        && s2 == dh
        && s0 >= 0
        && s1 >= 0
        && dh > 0
        && dh % 2 == 0
        && b * t * heads > 0
        && table_ok(cos)
        && table_ok(sin)
        && cos.size() == sin.size();
    if !fits {
        return None;
    }
    let shape = Shape {
        b: b as usize,
        t: t as usize,
        row: (heads * dh) as usize,
        dh: dh as usize,
        strides: [s0 as usize, s1 as usize],
        per_text: cos.dim() == 4,
    };
    let out = Tensor::empty([b, t, heads, dh], (kind, Device::Cpu));
    match kind {
        // SAFETY: x's elements lie within `shape.span()` of its first one (its strides and
        // sizes, checked above, are those of a valid view); the tables are contiguous CPU
        // tensors of x's kind; `out` is fresh and written only through its slice.
        Kind::Float => unsafe { run::<f32>(x, cos, sin, &out, &shape) },
        // SAFETY: as above; half's bf16 has the layout of libtorch's BFloat16.
        _ => unsafe { run::<bf16>(x, cos, sin, &out, &shape) },
    }
    Some(out)
}

/// Where the tokens' rows lie.
struct Shape {
    b: usize,
    t: usize,
    /// Elements of one token's heads.
    row: usize,
    dh: usize,
    /// x's strides over batch and position.
    strides: [usize; 2],
    /// Whether the tables hold a row per text and position, not per position only.
    per_text: bool,
}

impl Shape {
    /// The elements from x's first to its last.
    fn span(&self) -> usize {
        (self.b - 1) * self.strides[0] + (self.t - 1) * self.strides[1] + self.row
    }
}

/// # Safety
/// As `rotate_half` checks: x's elements within `shape.span()`, the tables of T's kind with a
/// row of d_head per position (per text and position where `per_text`), `out` contiguous
/// [b, t, row] of T and not used elsewhere meanwhile.
unsafe fn run<T: Element>(x: &Tensor, cos: &Tensor, sin: &Tensor, out: &Tensor, shape: &Shape) {
    let tokens = shape.b * shape.t;
    let table = if shape.per_text { tokens } else { shape.t } * shape.dh;
    // SAFETY: guaranteed by the caller; x's span is only read (its other elements too: they
    // belong to the same view's storage).
    let (src, ys) = unsafe {
        (
            Source {
                x: elements::<T>(x, shape.span()),
                cos: elements::<T>(cos, table),
                sin: elements::<T>(sin, table),
                shape,
            },
            elements_mut::<T>(out, tokens * shape.row),
        )
    };
    let per_share = tokens.div_ceil(threads() * 4).max(16);
    let (wide, fma) = (has_avx512_bw(), has_fma());
    run_shares(
        ys.chunks_mut(per_share * shape.row).enumerate(),
        |(i, y)| {
            let first = i * per_share;
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: `has_avx512_bw` found AVX-512F and AVX-512BW on this CPU.
                return unsafe { tokens_avx512(&src, y, first) };
            } else if fma {
                // SAFETY: `has_fma` found AVX2 and FMA on this CPU.
                return unsafe { tokens_avx2(&src, y, first) };
            }
            let _ = (wide, fma);
            rotate_tokens::<T, false>(&src, y, first);
        },
    );
}

/// What the rotation reads: x's span, the tables, and where the tokens lie.
struct Source<'a, T> {
    x: &'a [T],
    cos: &'a [T],
    sin: &'a [T],
    shape: &'a Shape,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn tokens_avx512<T: Element>(src: &Source<T>, y: &mut [T], first: usize) {
    rotate_tokens::<T, true>(src, y, first);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tokens_avx2<T: Element>(src: &Source<T>, y: &mut [T], first: usize) {
    rotate_tokens::<T, true>(src, y, first);
}

/// The tokens from `first` on whose rows `y` holds.
#[inline(always)]
fn rotate_tokens<T: Element, const FUSED: bool>(src: &Source<T>, y: &mut [T], first: usize) {
    let shape = src.shape;
    let (dh, half) = (shape.dh, shape.dh / 2);
    for (k, y) in y.chunks_exact_mut(shape.row).enumerate() {
        let token = first + k;
        let (bi, ti) = (token / shape.t, token % shape.t);
        let start = bi * shape.strides[0] + ti * shape.strides[1];
        let x = &src.x[start..start + shape.row];
        let at = if shape.per_text { token } else { ti } * dh;
        let (c, s) = (&src.cos[at..at + dh], &src.sin[at..at + dh]);
        for (x, y) in x.chunks_exact(dh).zip(y.chunks_exact_mut(dh)) {
            let (lo, hi) = x.split_at(half);
            let (y_lo, y_hi) = y.split_at_mut(half);
            turn::<T, FUSED>(lo, hi, &c[..half], &s[..half], y_lo);
            turn::<T, FUSED>(hi, lo, &c[half..], &s[half..], y_hi);
        }
    }
}

/// y = T(T(x · c) + other · s), element by element; with `FUSED` the second product and the
/// sum round once, as libtorch's vectorised loop computes them where the CPU has FMA.
#[inline(always)]
fn turn<T: Element, const FUSED: bool>(x: &[T], other: &[T], c: &[T], s: &[T], y: &mut [T]) {
    for ((((y, x), o), c), s) in y.iter_mut().zip(x).zip(other).zip(c).zip(s) {
        let turned = T::from_f32(x.f32() * c.f32()).f32();
        let sum = if FUSED {
            o.f32().mul_add(s.f32(), turned)
        } else {
            turned + o.f32() * s.f32()
        };
        *y = T::from_f32(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's operations, as the model ran them before this kernel.
    fn reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let swapped = Tensor::cat(&[x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
        let mut turned = x * cos;
        let _ = turned.addcmul_(&swapped, sin);
        turned
    }

    fn tables(rows: &[i64], kind: Kind) -> (Tensor, Tensor) {
        let angles = Tensor::rand(rows, (Kind::Float, Device::Cpu)) * 6.0;
        let (c, s) = (angles.cos(), angles.sin());
        let cos = Tensor::cat(&[&c, &c], -1).to_kind(kind);
        let sin = Tensor::cat(&[-&s, s], -1).to_kind(kind);
        (cos, sin)
    }

    /// Q and K as views of a QKV product, with tables per position and per text and position.
    #[test]
    fn matches_libtorch_on_views_of_the_qkv_product() {
        tch::manual_seed(8);
        let (b, t, h, hk, dh) = (3, 5, 4, 2, 16);
        for kind in [Kind::Float, Kind::BFloat16] {
            let qkv = (Tensor::randn([b, t, h + 2 * hk, dh], (Kind::Float, Device::Cpu)) * 2.0)
                .to_kind(kind);
            let qk = qkv.narrow(2, 0, h + hk);
            for rows in [vec![t, 1, dh / 2], vec![b, t, 1, dh / 2]] {
                let (cos, sin) = tables(&rows, kind);
                let got = rotate_half(&qk, &cos, &sin).expect("taken");
                let want = reference(&qk, &cos, &sin);
                assert_eq!(got.size(), want.size());
                assert!(got.is_contiguous());
                let (g, w) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
                // Apart by at most a unit of the terms' size: where libtorch fuses the
                // multiply-add its sum rounds once, and where the two terms nearly cancel that
                // unit is large beside the result.
                let size = reference(&qk.abs(), &cos.abs(), &sin.abs()).to_kind(Kind::Double);
                let unit = if kind == Kind::Float {
                    2f64.powi(-23)
                } else {
                    2f64.powi(-7)
                };
                let over = (&g - &w).abs() - size * (2.0 * unit) - 1e-30;
                assert!(
                    over.max().double_value(&[]) <= 0.0,
                    "{kind:?} tables {rows:?}: apart"
                );
                let same = g.eq_tensor(&w).to_kind(Kind::Float).mean(Kind::Float);
                assert!(same.double_value(&[]) > 0.99, "{kind:?}: {same:?} equal");
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let x = Tensor::zeros([1, 2, 3, 4], (Kind::Float, Device::Cpu));
        let (cos, sin) = tables(&[2, 1, 2], Kind::Float);
        assert!(rotate_half(&x, &cos, &sin).is_some());
        assert!(rotate_half(&x.to_kind(Kind::Double), &cos, &sin).is_none());
        assert!(
            rotate_half(&x.transpose(1, 2), &cos, &sin).is_none(),
            "heads apart"
        );
        assert!(
            rotate_half(&x.narrow(3, 0, 2), &cos, &sin).is_none(),
            "a part of each head"
        );
        let (c3, s3) = tables(&[3, 1, 2], Kind::Float);
        assert!(
            rotate_half(&x, &c3, &s3).is_none(),
            "tables for other positions"
        );
    }
}
