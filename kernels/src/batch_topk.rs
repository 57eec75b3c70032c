//! The largest entries of a whole batch, for BatchTopK training's selection.
//!
//! BatchTopK keeps the k·B largest of a batch's B x n pre-activations (131k of 67M at the
//! benchmark's shapes). libtorch's flat topk followed by a sort into row order took about 400 ms
//! on the 2-core development machine, twice the encoder's matmul. Here a first pass takes the
//! maxima of small groups of entries (a vector max per 16 entries); the keep-th largest of them
//! bounds the selection from below. A second pass collects the entries at or above the bound,
//! about 1.1 times as many as are kept, in row order, and only those are ranked exactly.

use crate::pool::{run_shares, threads};
use crate::scan::{BLOCK, at_or_above, group_maxima};
use crate::topk::shift;
use crate::view::{Value, elements, on_cpu};
use half::bf16;
use tch::{Kind, Tensor};

/// A batch's selected entries in compressed-row form: row b's are `cols[offsets\[b\]..]` up to
/// the next row's start, in column order, with their values.
#[derive(Debug)]
pub struct Selected {
    /// Start of each row's entries, i64 \[rows\].
    pub offsets: Tensor,
    /// Column of each selected entry, i64 \[nnz\].
    pub cols: Tensor,
    /// Value (x + bias) of each selected entry, f32 \[nnz\].
    pub vals: Tensor,
}

/// The `keep` largest positive entries of x [rows, n] (plus `bias` \[n\], added to every row,
/// when given), the leftmost in row-major order kept among ties at the threshold; all positive
/// entries when there are fewer. Zero and negative entries are never selected (a ReLU's
/// zeros carry no signal). Takes a contiguous f32 or bf16 CPU tensor, a contiguous f32 CPU
/// bias; returns `None` for anything else. With a NaN present the selection is unspecified.
pub fn batch_topk(x: &Tensor, bias: Option<&Tensor>, keep: usize) -> Option<Selected> {
    let (rows, n) = x.size2().ok()?;
    let (rows, n) = (rows as usize, n as usize);
    if !on_cpu(x) || rows == 0 || n == 0 || keep == 0 {
        return None;
    }
    let bias = shift(bias, n)?;
    let (flat, vals) = match x.kind() {
        // SAFETY: a contiguous CPU tensor of rows · n elements of this kind, borrowed (and so
        // not freed) for the call; nothing writes it meanwhile.
        Kind::Float => largest(unsafe { elements::<f32>(x, rows * n) }, &bias, keep),
        // SAFETY: as above; half's bf16 has the layout of libtorch's BFloat16.
        Kind::BFloat16 => largest(unsafe { elements::<bf16>(x, rows * n) }, &bias, keep),
        _ => return None,
    };
    let mut counts = vec![0i64; rows];
    for &f in &flat {
        counts[f as usize / n] += 1;
    }
    let mut start = 0;
    let offsets: Vec<i64> = counts
        .iter()
        .map(|&c| {
            let s = start;
            start += c;
            s
        })
        .collect();
    let cols: Vec<i64> = flat.iter().map(|&f| (f as usize % n) as i64).collect();
    Some(Selected {
        offsets: Tensor::from_slice(&offsets),
        cols: Tensor::from_slice(&cols),
        vals: Tensor::from_slice(&vals),
    })
}

/// Flat indices (in increasing order) and values of the selected entries.
fn largest<T: Value>(x: &[T], bias: &[f32], keep: usize) -> (Vec<u64>, Vec<f32>) {
    let n = bias.len();
    let rows = x.len() / n;
    let share = rows.div_ceil(threads() * 4).max(1);
    let shares = rows.div_ceil(share);
    let k = keep.div_ceil(rows);
    let ranges = (4 * k).div_ceil(BLOCK);

    // Pass 1: the maxima of 16 · `ranges` disjoint groups of each row. Their keep-th largest is
    // a bound no selected entry is below (keep entries reach it). Too few groups for that (a
    // narrow or nearly whole selection): every positive entry is a candidate.
    let per_row = BLOCK * ranges;
    let mut bound = 0.0f32;
    if ranges <= n / BLOCK && rows * per_row >= keep {
        let mut maxima = vec![0f32; rows * per_row];
        run_shares(
            x.chunks(share * n).zip(maxima.chunks_mut(share * per_row)),
            |(x, maxima)| {
                let mut m = Vec::with_capacity(per_row);
                for (row, out) in x.chunks_exact(n).zip(maxima.chunks_exact_mut(per_row)) {
                    group_maxima(row, bias, ranges, &mut m);
                    out.copy_from_slice(&m);
                }
            },
        );
        let at = maxima.len() - keep;
        bound = bound.max(*maxima.select_nth_unstable_by(at, f32::total_cmp).1);
    }

    // Pass 2: the positive entries at or above the bound, each share's in row-major order.
    let mut found: Vec<Vec<(u64, f32)>> = (0..shares).map(|_| Vec::new()).collect();
    run_shares(
        x.chunks(share * n).zip(found.iter_mut()).enumerate(),
        |(s, (x, found))| {
            let base = (s * share * n) as u64;
            for (r, row) in x.chunks_exact(n).enumerate() {
                collect(row, bias, bound, base + (r * n) as u64, found);
            }
        },
    );
    let found: Vec<(u64, f32)> = found.into_iter().flatten().collect();

    // The keep largest of those, leftmost first among equals, left in row-major order.
    if found.len() <= keep {
        return found.into_iter().unzip();
    }
    let mut ranked = found.clone();
    let order = |a: &(u64, f32), b: &(u64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let (lf, lv) = *ranked.select_nth_unstable_by(keep - 1, order).1;
    found
        .into_iter()
        .filter(|&(f, v)| v > lv || (v == lv && f <= lf))
        .unzip()
}

/// Pushes every positive entry of `row` (plus `bias`) at or above `low`, with its flat index
/// (`at` for the row's first).
fn collect<T: Value>(row: &[T], bias: &[f32], low: f32, at: u64, found: &mut Vec<(u64, f32)>) {
    at_or_above(row, bias, low, |j, v| {
        if v > 0.0 {
            found.push((at + j as u64, v));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The reference: every positive x + bias ranked by a full sort (largest first, then the
    /// lower flat index), the first `keep` taken, then put back in row-major order.
    fn by_sorting(x: &Tensor, bias: &Tensor, keep: usize) -> Vec<(usize, usize, f32)> {
        let n = x.size()[1] as usize;
        let v = Vec::<f32>::try_from((x.to_kind(Kind::Float) + bias).view([-1])).unwrap();
        let mut all: Vec<(usize, f32)> = v.into_iter().enumerate().filter(|e| e.1 > 0.0).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(keep);
        all.sort_by_key(|e| e.0);
        all.into_iter().map(|(f, v)| (f / n, f % n, v)).collect()
    }

    fn entries(s: &Selected, rows: usize) -> Vec<(usize, usize, f32)> {
        let offsets = Vec::<i64>::try_from(&s.offsets).unwrap();
        let cols = Vec::<i64>::try_from(&s.cols).unwrap();
        let vals = Vec::<f32>::try_from(&s.vals).unwrap();
        assert_eq!(offsets.len(), rows);
        let mut out = Vec::new();
        for r in 0..rows {
            let end = offsets.get(r + 1).copied().unwrap_or(cols.len() as i64);
            for e in offsets[r]..end {
                out.push((r, cols[e as usize] as usize, vals[e as usize]));
            }
        }
        out
    }

    #[test]
    fn matches_a_full_sort() {
        tch::manual_seed(13);
        let f = (Kind::Float, Device::Cpu);
        for kind in [Kind::Float, Kind::BFloat16] {
            for (rows, n) in [(1, 1), (3, 17), (37, 100), (64, 1000)] {
                let x = Tensor::randn([rows, n], f).to_kind(kind);
                // Small integers: many exact ties, in both kinds, at and around the threshold.
                let ties = Tensor::randint(6, [rows, n], f).to_kind(kind) - 2.0;
                let bias = Tensor::randn([n], f) * 0.5;
                let zero = Tensor::zeros([n], f);
                for (x, bias) in [(&x, &bias), (&ties, &zero), (&ties, &bias)] {
                    let total = (rows * n) as usize;
                    for keep in [1, 3, total / 7 + 1, total / 2 + 1, total] {
                        let got = batch_topk(x, Some(bias), keep).expect("taken");
                        let want = by_sorting(x, bias, keep);
                        assert_eq!(
                            entries(&got, rows as usize),
                            want,
                            "{kind:?} {rows}x{n} keep {keep}"
                        );
                    }
                }
                // Without a bias: the values in x's own kind, widened.
                let got = batch_topk(&x, None, 5).expect("taken");
                assert_eq!(
                    entries(&got, rows as usize),
                    by_sorting(&x, &Tensor::zeros([n], f), 5)
                );
            }
        }
    }

    #[test]
    fn keeps_only_positive_entries() {
        let x = Tensor::from_slice(&[-1f32, 0., 2., -0., 0., 3., 1e-40, -2.]).view([2, 4]);
        let got = batch_topk(&x, None, 6).expect("taken");
        assert_eq!(entries(&got, 2), [(0, 2, 2.), (1, 1, 3.), (1, 2, 1e-40)]);
        let none = batch_topk(&(-x.abs() - 1.0), None, 3).expect("taken");
        assert_eq!(entries(&none, 2), []);
        assert_eq!(Vec::<i64>::try_from(&none.offsets).unwrap(), [0, 0]);
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let x = Tensor::rand([4, 8], (Kind::Float, Device::Cpu));
        assert!(batch_topk(&x, None, 0).is_none());
        assert!(batch_topk(&x.tr(), None, 2).is_none());
        assert!(batch_topk(&x.to_kind(Kind::Double), None, 2).is_none());
        assert!(batch_topk(&x.view([-1]), None, 2).is_none());
        assert!(batch_topk(&x, Some(&Tensor::zeros([7], (Kind::Float, Device::Cpu))), 2).is_none());
    }
}
