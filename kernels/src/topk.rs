//! The k largest entries of each row, for dictionary training's TopK selection.
//!
//! A TopK step selects k = 32 or so of 16k pre-activations in each of thousands of rows.
//! libtorch partially sorts every row, which on the 2-core development machine took 57 ms for
//! 4,096 rows of 16,384 bf16 values, a quarter of the step. Almost every value loses against
//! the k-th largest seen so far, so one pass that compares blocks of 16 values with it and looks
//! closer only at blocks holding a winner does the same job at the speed memory streams.

use crate::pool::{has_fma, run_shares, threads};
use half::bf16;
use tch::{Device, Kind, Tensor};

/// Values and columns of the k largest entries of each row of x [rows, n], largest first, as
/// libtorch's `topk(k, 1, largest = true, sorted = true)` gives them; where several entries
/// tie with the k-th, the leftmost are kept (libtorch keeps any). Takes a contiguous f32 or
/// bf16 CPU tensor with 1 ≤ k ≤ n and no NaN (a NaN is never selected, where libtorch ranks it
/// first); returns `None` for anything else.
pub fn row_topk(x: &Tensor, k: usize) -> Option<(Tensor, Tensor)> {
    let (rows, n) = x.size2().ok()?;
    let (rows, n) = (rows as usize, n as usize);
    let fits = x.device() == Device::Cpu
        && x.is_contiguous()
        && !x.requires_grad()
        && (1..=n).contains(&k)
        && rows > 0;
    if !fits {
        return None;
    }
    let mut values = vec![0f32; rows * k];
    let mut cols = vec![0i64; rows * k];
    match x.kind() {
        // SAFETY: a contiguous CPU tensor of rows · n elements of this kind, borrowed (and so
        // not freed) for the call; nothing writes it meanwhile.
        Kind::Float => select(
            unsafe { elements::<f32>(x, rows * n) },
            n,
            k,
            &mut values,
            &mut cols,
        ),
        // SAFETY: as above; half's bf16 has the layout of libtorch's BFloat16.
        Kind::BFloat16 => select(
            unsafe { elements::<bf16>(x, rows * n) },
            n,
            k,
            &mut values,
            &mut cols,
        ),
        _ => return None,
    }
    let shape = [rows as i64, k as i64];
    let values = Tensor::from_slice(&values).view(shape).to_kind(x.kind());
    Some((values, Tensor::from_slice(&cols).view(shape)))
}

/// # Safety
/// `x` must be a contiguous CPU tensor of `n` elements whose kind has T's layout, not written
/// while the slice lives.
unsafe fn elements<T>(x: &Tensor, n: usize) -> &[T] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(x.data_ptr() as *const T, n) }
}

/// What an entry becomes when compared.
trait Value: Copy + Send + Sync {
    fn f32(self) -> f32;
}

impl Value for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Value for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16) // exact: bf16 is an f32's top half
    }
}

/// Every row's selection, rows shared out among the threads.
fn select<T: Value>(x: &[T], n: usize, k: usize, values: &mut [f32], cols: &mut [i64]) {
    let rows = x.len() / n;
    let share = rows.div_ceil(threads() * 4).max(1);
    let shares = x
        .chunks(share * n)
        .zip(values.chunks_mut(share * k).zip(cols.chunks_mut(share * k)));
    let fma = has_fma();
    run_shares(shares, |(x, (values, cols))| {
        for ((row, v), c) in x
            .chunks_exact(n)
            .zip(values.chunks_exact_mut(k))
            .zip(cols.chunks_exact_mut(k))
        {
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: `has_fma` found AVX2 (and FMA) on this CPU.
                unsafe { row_avx2(row, v, c) };
                continue;
            }
            let _ = fma;
            row_select(row, v, c);
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2<T: Value>(row: &[T], values: &mut [f32], cols: &mut [i64]) {
    row_select(row, values, cols);
}

/// Block width: one AVX-512 register of f32, two of AVX2.
const BLOCK: usize = 16;

/// One row: the first k entries kept in a min-heap, then each later one that beats the heap's
/// smallest replaces it; a block of 16 none of which beats it is passed over whole. Then the
/// kept entries are sorted, largest first, leftmost first among equals.
#[inline(always)]
fn row_select<T: Value>(row: &[T], values: &mut [f32], cols: &mut [i64]) {
    let k = values.len();
    for (j, (v, c)) in values.iter_mut().zip(cols.iter_mut()).enumerate() {
        (*v, *c) = (row[j].f32(), j as i64);
    }
    for i in (0..k / 2).rev() {
        sift_down(values, cols, i);
    }
    let mut j = k;
    while j < row.len() && !j.is_multiple_of(BLOCK) {
        offer(values, cols, j, row[j].f32());
        j += 1;
    }
    let blocks = row[j..].chunks_exact(BLOCK);
    let tail = blocks.remainder();
    for block in blocks {
        // An OR of 16 comparisons with no early exit: one vector compare and mask.
        let low = values[0];
        let mut beats = false;
        for &x in block {
            beats |= x.f32() > low;
        }
        if beats {
            for (i, &x) in block.iter().enumerate() {
                offer(values, cols, j + i, x.f32());
            }
        }
        j += BLOCK;
    }
    for (i, &x) in tail.iter().enumerate() {
        offer(values, cols, j + i, x.f32());
    }
    let mut kept: Vec<(f32, i64)> = values.iter().copied().zip(cols.iter().copied()).collect();
    kept.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for ((v, c), (x, j)) in values.iter_mut().zip(cols.iter_mut()).zip(kept) {
        (*v, *c) = (x, j);
    }
}

/// Whether slot a sits below slot b in the heap: a smaller value, or an equal one further right.
#[inline(always)]
fn below(values: &[f32], cols: &[i64], a: usize, b: usize) -> bool {
    values[a] < values[b] || (values[a] == values[b] && cols[a] > cols[b])
}

/// Puts entry j of value x in the heap if it beats the smallest kept.
#[inline(always)]
fn offer(values: &mut [f32], cols: &mut [i64], j: usize, x: f32) {
    if x > values[0] {
        (values[0], cols[0]) = (x, j as i64);
        sift_down(values, cols, 0);
    }
}

/// Restores the min-heap below slot i. The heap's first is the smallest value, and among equal
/// values the rightmost column, so that a tie evicts the latest entry and the leftmost stay.
#[inline(always)]
fn sift_down(values: &mut [f32], cols: &mut [i64], mut i: usize) {
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut m = i;
        if l < values.len() && below(values, cols, l, m) {
            m = l;
        }
        if r < values.len() && below(values, cols, r, m) {
            m = r;
        }
        if m == i {
            return;
        }
        values.swap(i, m);
        cols.swap(i, m);
        i = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against libtorch's topk on values without ties (a permutation per row), for both kinds,
    /// widths that leave tails, k from 1 to n; and the leftmost kept where values tie.
    #[test]
    fn matches_libtorch_topk() {
        tch::manual_seed(11);
        for kind in [Kind::Float, Kind::BFloat16] {
            for (rows, n) in [(1, 1), (3, 17), (37, 100), (64, 1000)] {
                // Distinct small integers are exact in bf16 (up to 256): rank them by a random key.
                let x = Tensor::rand([rows, n], (Kind::Float, Device::Cpu))
                    .argsort(1, false)
                    .remainder(256)
                    .to_kind(Kind::Float);
                let x = if n > 256 {
                    Tensor::rand([rows, n], (Kind::Float, Device::Cpu))
                } else {
                    x
                };
                let x = x.to_kind(kind);
                for k in [1, 2, 7, 32, n] {
                    let k = k.min(n) as usize;
                    let (v, c) = row_topk(&x, k).expect("taken");
                    let (tv, tc) = x.topk(k as i64, 1, true, true);
                    assert_eq!(v.kind(), kind);
                    assert!(v.equal(&tv), "{kind:?} {rows}x{n} k {k}: values");
                    // Different columns are fine only where values tie.
                    let same_vals = x.gather(1, &c, false).equal(&tv);
                    assert!(
                        same_vals,
                        "{kind:?} {rows}x{n} k {k}: the columns hold the values"
                    );
                    if n <= 256 {
                        assert!(c.equal(&tc), "{kind:?} {rows}x{n} k {k}: columns");
                    }
                }
            }
        }
        let tied = Tensor::from_slice(&[1f32, 3., 3., 0., 3., 2., 3.]).view([1, 7]);
        let (v, c) = row_topk(&tied, 3).unwrap();
        assert_eq!(Vec::<f32>::try_from(v.view([-1])).unwrap(), [3., 3., 3.]);
        assert_eq!(Vec::<i64>::try_from(c.view([-1])).unwrap(), [1, 2, 4]);
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let x = Tensor::rand([4, 8], (Kind::Float, Device::Cpu));
        assert!(row_topk(&x, 0).is_none());
        assert!(row_topk(&x, 9).is_none());
        assert!(row_topk(&x.tr(), 2).is_none());
        assert!(row_topk(&x.to_kind(Kind::Double), 2).is_none());
        assert!(row_topk(&x.view([-1]), 2).is_none());
    }
}
