//! The k largest entries of each row, for dictionary training's TopK selection.
//!
//! A TopK step selects k = 32 or so of 16k pre-activations in each of thousands of rows.
//! libtorch partially sorts every row, which on the 2-core development machine took 57 ms for
//! 4,096 rows of 16,384 bf16 values, a quarter of the step. Almost every value loses against
//! the k-th largest seen so far, so one pass that compares blocks of 16 values with it and looks
//! closer only at the entries that beat it (the `scan` module) does the same job at the speed
//! memory streams.
//!
//! The encoder's bias can be added here, entry by entry as it is compared, rather than by the
//! matmul: that saves a pass over the whole [rows, n] product, which costs as much as this one.

use crate::pool::{run_shares, threads};
use crate::scan::{BLOCK, at_or_above, group_maxima, scan};
use crate::view::{Value, elements, on_cpu};
use half::bf16;
use tch::{Kind, Tensor};

/// Values and columns of the k largest entries of each row of x [rows, n] (plus `bias` \[n\],
/// added to every row, when given), largest first, as libtorch's
/// `(x + bias).topk(k, 1, largest = true, sorted = true)` gives them; where several entries tie
/// with the k-th, the leftmost are kept (libtorch keeps any). The values have x's kind without
/// a bias and are f32 with one. Takes a contiguous f32 or bf16 CPU tensor with 1 ≤ k ≤ n, a
/// contiguous f32 CPU bias; returns `None` for anything else. With a NaN in a row, that row's
/// selection is unspecified (libtorch ranks NaN first); pre-activations hold none.
pub fn row_topk(x: &Tensor, bias: Option<&Tensor>, k: usize) -> Option<(Tensor, Tensor)> {
    let (rows, n) = x.size2().ok()?;
    let (rows, n) = (rows as usize, n as usize);
    let fits = on_cpu(x) && (1..=n).contains(&k) && rows > 0;
    if !fits {
        return None;
    }
    let bias = shift(bias, n)?;
    let mut values = vec![0f32; rows * k];
    let mut cols = vec![0i64; rows * k];
    match x.kind() {
        // SAFETY: a contiguous CPU tensor of rows · n elements of this kind, borrowed (and so
        // not freed) for the call; nothing writes it meanwhile.
        Kind::Float => select(
            unsafe { elements::<f32>(x, rows * n) },
            &bias,
            k,
            &mut values,
            &mut cols,
        ),
        // SAFETY: as above; half's bf16 has the layout of libtorch's BFloat16.
        Kind::BFloat16 => select(
            unsafe { elements::<bf16>(x, rows * n) },
            &bias,
            k,
            &mut values,
            &mut cols,
        ),
        _ => return None,
    }
    let shape = [rows as i64, k as i64];
    let values = Tensor::from_slice(&values).view(shape);
    let values = match bias {
        Shift::Zero(_) => values.to_kind(x.kind()),
        Shift::Bias(_) => values,
    };
    Some((values, Tensor::from_slice(&cols).view(shape)))
}

/// What is added to column j of every row before comparing: nothing, or a bias of n values.
pub(crate) enum Shift {
    /// No bias: n zeros, so both cases share one loop (x + 0 is x, and the add is free beside
    /// the memory traffic).
    Zero(Vec<f32>),
    /// The bias's values, copied out of its tensor.
    Bias(Vec<f32>),
}

impl std::ops::Deref for Shift {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Shift::Zero(v) | Shift::Bias(v) => v,
        }
    }
}

/// The bias as n values, or `None` when it is not a contiguous f32 CPU tensor of n elements.
pub(crate) fn shift(bias: Option<&Tensor>, n: usize) -> Option<Shift> {
    let Some(b) = bias else {
        return Some(Shift::Zero(vec![0.0; n]));
    };
    let fits = on_cpu(b) && b.kind() == Kind::Float && b.numel() == n;
    fits.then(|| Shift::Bias(Vec::<f32>::try_from(b.view([-1])).expect("f32 bias")))
}

/// Every row's selection, rows shared out among the threads.
fn select<T: Value>(x: &[T], bias: &[f32], k: usize, values: &mut [f32], cols: &mut [i64]) {
    let n = bias.len();
    let rows = x.len() / n;
    let share = rows.div_ceil(threads() * 4).max(1);
    let shares = x
        .chunks(share * n)
        .zip(values.chunks_mut(share * k).zip(cols.chunks_mut(share * k)));
    // Groups enough that the k-th largest of their maxima sits near the row's k-th largest.
    let ranges = (4 * k).div_ceil(BLOCK);
    let bounded = ranges <= n / BLOCK;
    run_shares(shares, |(x, (values, cols))| {
        let (mut maxima, mut found) = (Vec::new(), Vec::new());
        for ((row, v), c) in x
            .chunks_exact(n)
            .zip(values.chunks_exact_mut(k))
            .zip(cols.chunks_exact_mut(k))
        {
            if bounded {
                row_bounded(row, bias, ranges, (&mut maxima, &mut found), v, c);
            } else {
                row_select(row, bias, v, c);
            }
        }
    });
}

/// One row, in two passes: the maxima of 16 · `ranges` disjoint groups, whose k-th largest no
/// entry of the row's k largest can be below (k entries reach it); then every entry at or above
/// that bound, about 1.1 k of them, ranked exactly. `work` is reused from row to row.
fn row_bounded<T: Value>(
    row: &[T],
    bias: &[f32],
    ranges: usize,
    work: (&mut Vec<f32>, &mut Vec<(f32, i64)>),
    values: &mut [f32],
    cols: &mut [i64],
) {
    let (maxima, found) = work;
    let k = values.len();
    group_maxima(row, bias, ranges, maxima);
    let at = maxima.len() - k;
    let bound = *maxima.select_nth_unstable_by(at, f32::total_cmp).1;
    found.clear();
    at_or_above(row, bias, bound, |j, v| found.push((v, j as i64)));
    let order = |a: &(f32, i64), b: &(f32, i64)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if found.len() > k {
        found.select_nth_unstable_by(k - 1, order);
        found.truncate(k);
    }
    found.sort_unstable_by(order);
    for ((v, c), &(x, j)) in values.iter_mut().zip(cols.iter_mut()).zip(found.iter()) {
        (*v, *c) = (x, j);
    }
}

/// One row: the first k entries kept in a min-heap, then each later one that beats the heap's
/// smallest replaces it ([`scan`] rules out the rest 16 at a time). Then the kept entries are
/// sorted, largest first, leftmost first among equals.
fn row_select<T: Value>(row: &[T], bias: &[f32], values: &mut [f32], cols: &mut [i64]) {
    let k = values.len();
    for (j, (v, c)) in values.iter_mut().zip(cols.iter_mut()).enumerate() {
        (*v, *c) = (row[j].f32() + bias[j], j as i64);
    }
    for i in (0..k / 2).rev() {
        sift_down(values, cols, i);
    }
    let mut heap = (values, cols);
    scan::<T, _, false>(
        row,
        bias,
        k,
        &mut heap,
        |(values, _)| values[0],
        |(values, cols), j, x| offer(values, cols, j, x),
    );
    let (values, cols) = heap;
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
    use tch::Device;

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
                    let (v, c) = row_topk(&x, None, k).expect("taken");
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
        let (v, c) = row_topk(&tied, None, 3).unwrap();
        assert_eq!(Vec::<f32>::try_from(v.view([-1])).unwrap(), [3., 3., 3.]);
        assert_eq!(Vec::<i64>::try_from(c.view([-1])).unwrap(), [1, 2, 4]);
    }

    /// With a bias: as libtorch's topk of x + bias in f32, for both kinds, with some columns
    /// masked out by a bias of −∞ (as AuxK's selection among dead latents does).
    #[test]
    fn adds_the_bias_before_comparing() {
        tch::manual_seed(12);
        for kind in [Kind::Float, Kind::BFloat16] {
            for (rows, n, k) in [(5i64, 40i64, 3usize), (33, 1000, 32), (2, 17, 17)] {
                let x = Tensor::randn([rows, n], (Kind::Float, Device::Cpu)).to_kind(kind);
                let mut bias = Tensor::randn([n], (Kind::Float, Device::Cpu));
                if n as usize > k {
                    let masked = Tensor::rand([n], (Kind::Float, Device::Cpu)).lt(0.3);
                    bias = bias.masked_fill(&masked, f64::NEG_INFINITY);
                }
                let (v, c) = row_topk(&x, Some(&bias), k).expect("taken");
                let shifted = x.to_kind(Kind::Float) + &bias;
                let (tv, _) = shifted.topk(k as i64, 1, true, true);
                assert_eq!(v.kind(), Kind::Float);
                assert!(v.equal(&tv), "{kind:?} {rows}x{n} k {k}: values");
                assert!(shifted.gather(1, &c, false).equal(&tv), "columns");
            }
        }
        let x = Tensor::rand([4, 8], (Kind::Float, Device::Cpu));
        let short = Tensor::zeros([7], (Kind::Float, Device::Cpu));
        assert!(row_topk(&x, Some(&short), 2).is_none());
        let double = Tensor::zeros([8], (Kind::Double, Device::Cpu));
        assert!(row_topk(&x, Some(&double), 2).is_none());
    }

    /// Wide rows of a few distinct values (the two-pass path, ties everywhere, the bound among
    /// them), against a full sort by value and then column; and rows too narrow for groups.
    #[test]
    fn keeps_the_leftmost_of_ties_in_wide_rows() {
        tch::manual_seed(14);
        let f = (Kind::Float, Device::Cpu);
        for (n, kind) in [
            (2053, Kind::BFloat16),
            (4096, Kind::Float),
            (40, Kind::Float),
        ] {
            let x = (Tensor::randint(7, [9, n], f) - 3.0).to_kind(kind);
            let bias = (Tensor::randint(3, [n], f) * 0.5).to_kind(Kind::Float);
            let rows = Vec::<f32>::try_from((x.to_kind(Kind::Float) + &bias).view([-1])).unwrap();
            for k in [1, 5, 32, 100, 513, 40] {
                let k = k.min(n as usize);
                let (v, c) = row_topk(&x, Some(&bias), k).expect("taken");
                let (v, c) = (
                    Vec::<f32>::try_from(v.view([-1])).unwrap(),
                    Vec::<i64>::try_from(c.view([-1])).unwrap(),
                );
                for (r, row) in rows.chunks(n as usize).enumerate() {
                    let mut all: Vec<(f32, i64)> = row.iter().copied().zip(0..).collect();
                    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    let want: Vec<(f32, i64)> = all[..k].to_vec();
                    let got: Vec<(f32, i64)> = v[r * k..(r + 1) * k]
                        .iter()
                        .copied()
                        .zip(c[r * k..(r + 1) * k].iter().copied())
                        .collect();
                    assert_eq!(got, want, "n {n} k {k} row {r}");
                }
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let x = Tensor::rand([4, 8], (Kind::Float, Device::Cpu));
        assert!(row_topk(&x, None, 0).is_none());
        assert!(row_topk(&x, None, 9).is_none());
        assert!(row_topk(&x.tr(), None, 2).is_none());
        assert!(row_topk(&x.to_kind(Kind::Double), None, 2).is_none());
        assert!(row_topk(&x.view([-1]), None, 2).is_none());
    }
}
