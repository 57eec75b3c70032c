//! What a scorer's answers are worth: the confusion of a yes/no classification and its rates,
//! the area under the ROC curve when answers come with a probability, Pearson's correlation
//! for simulated activations, and bootstrap intervals for a run's means over latents.
//!
//! A failed answer (one that could not be parsed) is never dropped silently: [`Confusion`] keeps
//! the failures of each class beside the valid answers, and [`Confusion::strict`] counts them as
//! wrong, so every rate can be reported both over the valid answers and over all of them.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Counts of a yes/no classification: true and false positives and negatives among valid
/// answers, and the answers of each class that failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Positives answered yes.
    pub tp: usize,
    /// Negatives answered yes.
    pub fp: usize,
    /// Negatives answered no.
    pub tn: usize,
    /// Positives answered no.
    pub fn_: usize,
    /// Positives without a valid answer.
    pub failed_pos: usize,
    /// Negatives without a valid answer.
    pub failed_neg: usize,
}

impl Confusion {
    /// Counts `(truth, answer)` pairs; `None` is a failed answer.
    pub fn of(items: impl IntoIterator<Item = (bool, Option<bool>)>) -> Confusion {
        let mut c = Confusion::default();
        for (truth, answer) in items {
            match (truth, answer) {
                (true, Some(true)) => c.tp += 1,
                (true, Some(false)) => c.fn_ += 1,
                (false, Some(true)) => c.fp += 1,
                (false, Some(false)) => c.tn += 1,
                (true, None) => c.failed_pos += 1,
                (false, None) => c.failed_neg += 1,
            }
        }
        c
    }

    /// Valid answers.
    pub fn valid(&self) -> usize {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// Failed answers.
    pub fn failed(&self) -> usize {
        self.failed_pos + self.failed_neg
    }

    /// The same answers with each failure counted as a wrong one: a failed positive as a
    /// missed one, a failed negative as a false alarm.
    pub fn strict(&self) -> Confusion {
        Confusion {
            tp: self.tp,
            fp: self.fp + self.failed_neg,
            tn: self.tn,
            fn_: self.fn_ + self.failed_pos,
            failed_pos: 0,
            failed_neg: 0,
        }
    }

    /// tp / (tp + fn): the share of positives found (the true-positive rate).
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// tn / (tn + fp): the share of negatives rejected (the true-negative rate).
    pub fn specificity(&self) -> Option<f64> {
        ratio(self.tn, self.tn + self.fp)
    }

    /// tp / (tp + fp): the share of yes answers that were right.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    /// 2tp / (2tp + fp + fn), the harmonic mean of precision and recall.
    pub fn f1(&self) -> Option<f64> {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// (recall + specificity) / 2, which a constant answer holds at 0.5 whatever the balance of
    /// the classes; `None` unless both classes have valid answers.
    pub fn balanced_accuracy(&self) -> Option<f64> {
        Some((self.recall()? + self.specificity()?) / 2.0)
    }
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Area under the ROC curve of `scores` for telling `labels`' positives from its negatives:
/// the chance that a random positive scores above a random negative, ties counting half
/// (the Mann–Whitney U over mid-ranks). `None` unless both classes are present; scores must
/// not be NaN.
pub fn auc(labels: &[bool], scores: &[f64]) -> Option<f64> {
    assert_eq!(labels.len(), scores.len(), "one score per label");
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let ranks = mid_ranks(scores);
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(r, _)| r)
        .sum();
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// The mean of `xs`, `None` when empty.
pub fn mean(xs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

/// Pearson's correlation of `a` and `b`; `None` when either is constant or they are empty.
pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "paired values");
    let n = a.len() as f64;
    if a.is_empty() {
        return None;
    }
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

/// Each value's rank from 1, ties sharing the mean of the ranks they span.
pub fn mid_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = mid;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation (Pearson's on mid-ranks); `None` when either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    pearson(&mid_ranks(a), &mid_ranks(b))
}

/// A mean and its 95% bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The mean of the values (weighted when weights were given).
    pub mean: f64,
    /// The 2.5th percentile of the resampled means.
    pub low: f64,
    /// The 97.5th percentile of the resampled means.
    pub high: f64,
    /// Values the mean is over.
    pub n: usize,
}

/// The mean of `values` (weighted by `weights` when given) with a percentile bootstrap 95%
/// interval from `resamples` draws of the values with replacement, seeded; `None` when there
/// are no values or the weights sum to nothing.
pub fn bootstrap_mean(
    values: &[f64],
    weights: Option<&[f64]>,
    resamples: usize,
    seed: u64,
) -> Option<Interval> {
    if let Some(w) = weights {
        assert_eq!(w.len(), values.len(), "one weight per value");
    }
    let weight = |i: usize| weights.map_or(1.0, |w| w[i]);
    let mean_of = |idx: &mut dyn Iterator<Item = usize>| -> Option<f64> {
        let (mut s, mut w) = (0.0, 0.0);
        for i in idx {
            s += weight(i) * values[i];
            w += weight(i);
        }
        (w > 0.0).then(|| s / w)
    };
    let mean = mean_of(&mut (0..values.len()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = values.len();
    let mut means: Vec<f64> = (0..resamples.max(1))
        .filter_map(|_| mean_of(&mut (0..n).map(|_| rng.random_range(0..n))))
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Some(Interval {
        mean,
        low: at(0.025),
        high: at(0.975),
        n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_of_nothing_is_none() {
        assert_eq!(mean([1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(mean([]), None);
    }

    #[test]
    fn rates_match_a_hand_counted_case_and_failures_count_against_strictly() {
        // 4 positives: 3 found, 1 missed, 1 failed; 5 negatives: 1 false alarm, 3 rejected, 1 failed.
        let items = [
            (true, Some(true)),
            (true, Some(true)),
            (true, Some(true)),
            (true, Some(false)),
            (true, None),
            (false, Some(true)),
            (false, Some(false)),
            (false, Some(false)),
            (false, Some(false)),
            (false, None),
        ];
        let c = Confusion::of(items);
        assert_eq!((c.tp, c.fn_, c.fp, c.tn, c.failed()), (3, 1, 1, 3, 2));
        assert_eq!(c.valid(), 8);
        assert_eq!(c.recall(), Some(0.75));
        assert_eq!(c.specificity(), Some(0.75));
        assert_eq!(c.precision(), Some(0.75));
        assert_eq!(c.f1(), Some(0.75));
        assert_eq!(c.balanced_accuracy(), Some(0.75));
        let s = c.strict();
        // Recall 3/5, specificity 3/5, precision 3/5.
        assert_eq!(s.valid(), 10);
        assert_eq!(s.balanced_accuracy(), Some(0.6));
        assert_eq!(s.precision(), Some(0.6));
        assert!((s.f1().unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(
            Confusion::of([(true, Some(true))]).balanced_accuracy(),
            None
        );
    }

    /// The chance that a positive outscores a negative, ties half, by counting every pair.
    fn auc_by_pairs(labels: &[bool], scores: &[f64]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &li) in labels.iter().enumerate() {
            for (j, &lj) in labels.iter().enumerate() {
                if li && !lj {
                    pairs += 1.0;
                    if scores[i] > scores[j] {
                        wins += 1.0;
                    } else if scores[i] == scores[j] {
                        wins += 0.5;
                    }
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn auc_by_ranks_equals_the_count_over_pairs() {
        assert_eq!(auc(&[true, false], &[0.9, 0.1]), Some(1.0));
        assert_eq!(auc(&[true, false], &[0.1, 0.9]), Some(0.0));
        assert_eq!(auc(&[true, false, true, false], &[0.5; 4]), Some(0.5));
        assert_eq!(auc(&[true, true], &[0.1, 0.2]), None);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let n = rng.random_range(2..40);
            let labels: Vec<bool> = (0..n).map(|_| rng.random_bool(0.4)).collect();
            // Scores on a coarse grid, so that ties are common.
            let scores: Vec<f64> = (0..n)
                .map(|_| rng.random_range(0..6) as f64 / 5.0)
                .collect();
            match auc(&labels, &scores) {
                Some(a) => assert!((a - auc_by_pairs(&labels, &scores)).abs() < 1e-12),
                None => assert!(labels.iter().all(|&l| l) || labels.iter().all(|&l| !l)),
            }
        }
    }

    #[test]
    fn pearson_matches_closed_forms() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&a, &[2.0, 4.0, 6.0, 8.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&a, &[8.0, 6.0, 4.0, 2.0]).unwrap() + 1.0).abs() < 1e-12);
        // Centred: a' = (-1.5, -0.5, 0.5, 1.5), b' = (-0.5, 0.5, 0.5, -0.5): orthogonal.
        assert_eq!(pearson(&a, &[0.0, 1.0, 1.0, 0.0]), Some(0.0));
        assert_eq!(pearson(&a, &[3.0; 4]), None);
    }

    #[test]
    fn spearman_is_one_for_any_increasing_map_and_follows_the_textbook_formula() {
        let a = [0.1, 5.0, 2.0, 9.0, 3.0];
        let cubed: Vec<f64> = a.iter().map(|x| x * x * x).collect();
        assert!((spearman(&a, &cubed).unwrap() - 1.0).abs() < 1e-12);
        // Without ties ρ = 1 − 6 Σd² / (n (n² − 1)); ranks of a (2,4,1,5,3) and b (1,2,3,4,5)
        // differ by (1,2,−2,1,−2): Σd² = 14, ρ = 1 − 84/120 = 0.3.
        let b = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(mid_ranks(&a), vec![1.0, 4.0, 2.0, 5.0, 3.0]);
        let a2 = [0.1, 2.0, 0.05, 9.0, 1.0];
        assert!((spearman(&a2, &b).unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(mid_ranks(&[1.0, 1.0, 0.0]), vec![2.5, 2.5, 1.0]);
    }

    #[test]
    fn bootstrap_intervals_hold_the_mean_and_weights_move_it() {
        let values: Vec<f64> = (0..200).map(|i| (i % 10) as f64 / 10.0).collect();
        let i = bootstrap_mean(&values, None, 1000, 1).unwrap();
        assert!((i.mean - 0.45).abs() < 1e-12);
        assert!(i.low < i.mean && i.mean < i.high, "{i:?}");
        // The standard error is sd/√n = 0.287/√200 ≈ 0.020, so the interval is about ±0.04.
        assert!(
            (i.high - i.low - 2.0 * 1.96 * 0.0203).abs() < 0.015,
            "{i:?}"
        );
        let w: Vec<f64> = values
            .iter()
            .map(|&v| if v > 0.5 { 3.0 } else { 1.0 })
            .collect();
        let weighted = bootstrap_mean(&values, Some(&w), 200, 1).unwrap();
        // (0.6+0.7+0.8+0.9)·3 + (0+…+0.5)) / (4·3 + 6) = (9 + 1.5) / 18.
        assert!((weighted.mean - 10.5 / 18.0).abs() < 1e-12);
        assert!(bootstrap_mean(&[], None, 10, 1).is_none());
        assert_eq!(bootstrap_mean(&[0.3], None, 10, 1).unwrap().low, 0.3);
    }
}
