//! Finding the few entries of a row that clear a bar, for the selection kernels.
//!
//! Selecting 32 of 16k entries, almost every entry falls below the bar (the k-th largest seen
//! so far, or a threshold), so the work is in ruling entries out fast. With AVX-512 a block of
//! 16 entries is widened, shifted by the bias and compared in three instructions, and only the
//! entries its mask names are handed on; elsewhere a block is compared as a whole and handed on
//! entry by entry when any entry clears it.

use crate::pool::has_fma;
use crate::view::Value;

/// Entries compared at once: one AVX-512 register of f32.
pub(crate) const BLOCK: usize = 16;

/// Hands `hit(state, j, row[j] + bias[j])` every j ≥ `from` whose value is above `bar(state)`
/// (at or above it with `AT_BAR`), reading the bar again after each hit, and perhaps some that
/// are not: `hit` makes the final comparison itself. T must be f32 or bf16.
#[inline(always)]
pub(crate) fn scan<T: Value, S, const AT_BAR: bool>(
    row: &[T],
    bias: &[f32],
    from: usize,
    state: &mut S,
    bar: impl Fn(&S) -> f32,
    hit: impl FnMut(&mut S, usize, f32),
) {
    // The vector loads below rely on both: checked once a row, in every build.
    assert!(row.len() == bias.len() && matches!(size_of::<T>(), 2 | 4));
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: this CPU has AVX-512F; T is f32 or bf16 (the callers' kinds).
            return unsafe { x86::scan_avx512::<T, S, AT_BAR>(row, bias, from, state, bar, hit) };
        }
        if has_fma() {
            // SAFETY: this CPU has AVX2 and FMA.
            return unsafe { x86::scan_avx2::<T, S, AT_BAR>(row, bias, from, state, bar, hit) };
        }
    }
    scan_blocks::<T, S, AT_BAR>(row, bias, from, state, bar, hit);
}

/// Hands `keep(j, row[j] + bias[j])` every entry at or above `low`, in order of j.
#[inline(always)]
pub(crate) fn at_or_above<T: Value>(
    row: &[T],
    bias: &[f32],
    low: f32,
    mut keep: impl FnMut(usize, f32),
) {
    scan::<T, _, true>(
        row,
        bias,
        0,
        &mut keep,
        |_| low,
        |keep, j, v| {
            if v >= low {
                keep(j, v);
            }
        },
    );
}

/// The portable scan: a block's 16 comparisons ORed with no early exit (which compilers turn
/// into a vector compare), and every entry of a block with any hit handed on.
#[inline(always)]
fn scan_blocks<T: Value, S, const AT_BAR: bool>(
    row: &[T],
    bias: &[f32],
    from: usize,
    state: &mut S,
    bar: impl Fn(&S) -> f32,
    mut hit: impl FnMut(&mut S, usize, f32),
) {
    let clears = |v: f32, b: f32| if AT_BAR { v >= b } else { v > b };
    let mut j = from;
    let blocks = row[from..]
        .chunks_exact(BLOCK)
        .zip(bias[from..].chunks_exact(BLOCK));
    for (block, b) in blocks {
        let low = bar(state);
        let mut any = false;
        for (&x, &b) in block.iter().zip(b) {
            any |= clears(x.f32() + b, low);
        }
        if any {
            for (i, (&x, &b)) in block.iter().zip(b).enumerate() {
                hit(state, j + i, x.f32() + b);
            }
        }
        j += BLOCK;
    }
    while j < row.len() {
        hit(state, j, row[j].f32() + bias[j]);
        j += 1;
    }
}

/// The largest value of each of `16 · ranges` disjoint groups of the row's entries (plus
/// `bias`), into `out`: group (q, l) holds lane l (position mod 16) of the q-th of `ranges`
/// equal runs of whole blocks, so a block costs one vector max. Entries past the last whole
/// block are in no group. Needs `ranges` ≤ the number of whole blocks.
#[inline(always)]
pub(crate) fn group_maxima<T: Value>(row: &[T], bias: &[f32], ranges: usize, out: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: this CPU has AVX-512F.
            return unsafe { x86::maxima_avx512(row, bias, ranges, out) };
        }
        if has_fma() {
            // SAFETY: this CPU has AVX2 and FMA.
            return unsafe { x86::maxima_avx2(row, bias, ranges, out) };
        }
    }
    maxima(row, bias, ranges, out);
}

/// [`group_maxima`], written lane by lane so that compilers keep the 16 lanes in registers.
#[inline(always)]
fn maxima<T: Value>(row: &[T], bias: &[f32], ranges: usize, out: &mut Vec<f32>) {
    let blocks = row.len() / BLOCK;
    debug_assert!((1..=blocks).contains(&ranges));
    out.clear();
    for q in 0..ranges {
        let (from, to) = (
            q * blocks / ranges * BLOCK,
            (q + 1) * blocks / ranges * BLOCK,
        );
        let mut m = [f32::NEG_INFINITY; BLOCK];
        for (block, b) in row[from..to]
            .chunks_exact(BLOCK)
            .zip(bias[from..to].chunks_exact(BLOCK))
        {
            for ((m, &x), &b) in m.iter_mut().zip(block).zip(b) {
                let v = x.f32() + b;
                *m = if v > *m { v } else { *m };
            }
        }
        out.extend_from_slice(&m);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::load16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, maxima, scan_blocks};
    use crate::view::Value;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scan_avx2<T: Value, S, const AT_BAR: bool>(
        row: &[T],
        bias: &[f32],
        from: usize,
        state: &mut S,
        bar: impl Fn(&S) -> f32,
        hit: impl FnMut(&mut S, usize, f32),
    ) {
        scan_blocks::<T, S, AT_BAR>(row, bias, from, state, bar, hit);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn maxima_avx2<T: Value>(
        row: &[T],
        bias: &[f32],
        ranges: usize,
        out: &mut Vec<f32>,
    ) {
        maxima(row, bias, ranges, out);
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn maxima_avx512<T: Value>(
        row: &[T],
        bias: &[f32],
        ranges: usize,
        out: &mut Vec<f32>,
    ) {
        maxima(row, bias, ranges, out);
    }

    /// # Safety
    /// The CPU must have AVX-512F, and T must be f32 or bf16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scan_avx512<T: Value, S, const AT_BAR: bool>(
        row: &[T],
        bias: &[f32],
        from: usize,
        state: &mut S,
        bar: impl Fn(&S) -> f32,
        mut hit: impl FnMut(&mut S, usize, f32),
    ) {
        let mut j = from;
        while j + BLOCK <= row.len() {
            // SAFETY: j + 16 ≤ row.len() = bias.len(), so both loads stay inside the slices.
            let v = unsafe {
                _mm512_add_ps(
                    load16(row.as_ptr().add(j)),
                    _mm512_loadu_ps(bias.as_ptr().add(j)),
                )
            };
            let low = _mm512_set1_ps(bar(state));
            let mut mask = if AT_BAR {
                _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, low)
            } else {
                _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, low)
            };
            while mask != 0 {
                let i = j + mask.trailing_zeros() as usize;
                hit(state, i, row[i].f32() + bias[i]);
                mask &= mask - 1;
            }
            j += BLOCK;
        }
        while j < row.len() {
            hit(state, j, row[j].f32() + bias[j]);
            j += 1;
        }
    }

    /// 16 entries from `p` as f32: bf16 widened (its bits are an f32's top half), f32 as is.
    ///
    /// # Safety
    /// 16 values of T must be readable at `p`; T is f32 or bf16.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn load16<T: Value>(p: *const T) -> __m512 {
        if size_of::<T>() == 2 {
            // SAFETY: 16 two-byte values are 32 readable bytes.
            let h = unsafe { _mm256_loadu_si256(p as *const __m256i) };
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            // SAFETY: 16 four-byte values are 64 readable bytes.
            unsafe { _mm512_loadu_ps(p as *const f32) }
        }
    }
}
