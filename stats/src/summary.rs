//! A run's scores summed up: for each scorer and control, the mean balanced accuracy and AUC
//! over latents with 95% bootstrap intervals, unweighted and weighted by each latent's firing
//! frequency, and the share of windows without a valid answer; the real explanations beside
//! their controls, so the value an explanation adds over another latent's and over a list of
//! tokens can be read off one table.

use crate::metrics::{Interval, bootstrap_mean};
use saescope_store::explanations::Evidence;
use saescope_store::scores::{Control, ScoreRow};
use std::collections::{BTreeMap, HashMap};

/// Bootstrap resamples of the intervals.
pub const RESAMPLES: usize = 2_000;

/// One scorer and control over a run's latents.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryLine {
    /// The scorer.
    pub scorer: String,
    /// Whose explanations.
    pub control: Control,
    /// Latents scored.
    pub latents: usize,
    /// Windows asked about.
    pub windows: usize,
    /// Of those, without a valid answer.
    pub failed: usize,
    /// Mean balanced accuracy over the valid answers.
    pub balanced_accuracy: Option<Interval>,
    /// Mean balanced accuracy counting failures as wrong answers.
    pub balanced_accuracy_all: Option<Interval>,
    /// Mean balanced accuracy weighted by firing frequency, when frequencies are known.
    pub balanced_accuracy_weighted: Option<Interval>,
    /// Mean AUC, over the latents that have one.
    pub auc: Option<Interval>,
    /// Mean AUC weighted by firing frequency.
    pub auc_weighted: Option<Interval>,
    /// Mean of the scorer's own measure ([`ScoreRow::value`]: simulation's correlation,
    /// surprisal's and intervention's nats per token), for the scorers that have one.
    pub value: Option<Interval>,
}

/// The summary of `rows` from `evidence`, one line per scorer and control (scorers by name,
/// controls real, shuffled, baseline); `frequency` gives each latent's firing frequency for
/// the weighted means.
pub fn summarize(
    rows: &[ScoreRow],
    evidence: Evidence,
    frequency: Option<&HashMap<u32, f64>>,
    seed: u64,
) -> Vec<SummaryLine> {
    let mut groups: BTreeMap<(String, Control), Vec<&ScoreRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.evidence == evidence) {
        groups
            .entry((r.scorer.clone(), r.control))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|((scorer, control), rs)| {
            let mean = |f: &dyn Fn(&ScoreRow) -> Option<f64>, weighted: bool| -> Option<Interval> {
                let (mut v, mut w) = (Vec::new(), Vec::new());
                for r in &rs {
                    let Some(x) = f(r) else { continue };
                    let weight = match (weighted, frequency) {
                        (false, _) => 1.0,
                        (true, Some(freq)) => *freq.get(&r.latent)?,
                        (true, None) => return None,
                    };
                    v.push(x);
                    w.push(weight);
                }
                bootstrap_mean(&v, Some(&w), RESAMPLES, seed)
            };
            SummaryLine {
                latents: rs.len(),
                windows: rs.iter().map(|r| r.windows as usize).sum(),
                failed: rs.iter().map(|r| r.failed as usize).sum(),
                balanced_accuracy: mean(&|r| r.balanced_accuracy, false),
                balanced_accuracy_all: mean(&|r| r.balanced_accuracy_all, false),
                balanced_accuracy_weighted: mean(&|r| r.balanced_accuracy, true),
                auc: mean(&|r| r.auc, false),
                auc_weighted: mean(&|r| r.auc, true),
                value: mean(&|r| r.value, false),
                scorer,
                control,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(latent: u32, control: Control, ba: Option<f64>, auc: Option<f64>) -> ScoreRow {
        ScoreRow {
            latent,
            scorer: "detection".into(),
            control,
            evidence: Evidence::Activations,
            explanation_of: latent,
            explanation: "x".into(),
            model: "m".into(),
            settings: "{}".into(),
            windows: 10,
            valid: 8,
            failed: 2,
            balanced_accuracy: ba,
            balanced_accuracy_all: ba.map(|b| b - 0.1),
            precision: None,
            recall: None,
            f1: None,
            f1_all: None,
            auc,
            bin_recall: vec![],
            bin_auc: vec![],
            value: auc.map(|a| a - 0.5),
            bin_value: vec![],
        }
    }

    #[test]
    fn lines_average_each_control_and_weight_by_frequency() {
        let rows = vec![
            row(1, Control::Real, Some(0.9), Some(0.95)),
            row(2, Control::Real, Some(0.7), None),
            row(1, Control::Shuffled, Some(0.5), Some(0.5)),
            row(2, Control::Shuffled, None, Some(0.4)),
        ];
        let freq: HashMap<u32, f64> = [(1, 3.0), (2, 1.0)].into();
        let lines = summarize(&rows, Evidence::Activations, Some(&freq), 0);
        assert_eq!(lines.len(), 2);
        let real = &lines[0];
        assert_eq!(
            (real.control, real.latents, real.windows, real.failed),
            (Control::Real, 2, 20, 4)
        );
        assert!((real.balanced_accuracy.unwrap().mean - 0.8).abs() < 1e-12);
        assert!((real.balanced_accuracy_all.unwrap().mean - 0.7).abs() < 1e-12);
        // (0.9·3 + 0.7·1) / 4.
        assert!((real.balanced_accuracy_weighted.unwrap().mean - 0.85).abs() < 1e-12);
        assert_eq!(real.auc.unwrap().n, 1);
        let shuffled = &lines[1];
        assert_eq!(shuffled.balanced_accuracy.unwrap().n, 1);
        assert!((shuffled.auc.unwrap().mean - 0.45).abs() < 1e-12);
        assert!((shuffled.value.unwrap().mean + 0.05).abs() < 1e-12);
        let unweighted = summarize(&rows, Evidence::Activations, None, 0);
        assert!(unweighted[0].balanced_accuracy_weighted.is_none());
        assert!(summarize(&rows, Evidence::Effects, None, 0).is_empty());
    }
}
