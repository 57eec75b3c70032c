//! The surprisal scorer (delphi's): a model reads each test window after a short description
//! of the texts that follow, once with the explanation and once with a neutral description.
//! A good explanation of a feature makes the windows where it fires easier to predict, and
//! not the others: the score is the mean drop in per-token loss (nats) on activating windows
//! less the mean drop on silent ones. Each window's own drop also ranks it, giving an AUC.
//!
//! The neutral reading of a window does not depend on the explanation, so a latent's windows
//! are read neutrally once for its explanation and its controls.

use super::Shared;
use super::outcome::{Context, Outcome, by_bin, meta, record};
use super::{Job, Scorer};
use crate::metrics::mean;
use crate::read::{Read, Reading};
use saescope_store::examples::ExampleRow;
use saescope_store::scores::WindowScore;

/// The description the explanation is measured against.
pub const NEUTRAL: &str = "Various unrelated texts.";

/// An example pair before the one read, so that the model takes the description as saying
/// what the text is about.
const EXAMPLE: &str = "Description: mentions of months\nText: The harvest came late in \
October, and by November the fields were bare.\n\n";

/// The reading of a window's `text` after `description`; its one scored piece is the text.
pub fn reading(description: &str, text: &str) -> Reading {
    Reading {
        pieces: vec![
            format!("{EXAMPLE}Description: {}\nText:", description.trim()),
            format!(" {}", text.trim_start()),
        ],
        scored: vec![1],
        probes: Vec::new(),
    }
}

/// Each token's loss drop, neutral less explained (log-probabilities explained less
/// neutral); `None` when the two reads do not line up.
pub fn drops(explained: &Read, neutral: &Read) -> Option<Vec<f32>> {
    let (e, n) = (explained.scored.first()?, neutral.scored.first()?);
    (e.len() == n.len() && !e.is_empty()).then(|| e.iter().zip(n).map(|(a, b)| a - b).collect())
}

impl Context<'_> {
    /// The surprisal scorer: each window's loss drop with the explanation before it against
    /// the neutral description.
    pub(super) fn surprisal(
        &self,
        job: &Job,
        (active, silent): &(Vec<&ExampleRow>, Vec<&ExampleRow>),
        shared: &mut Shared<'_>,
    ) -> Outcome {
        let reader = self.reader();
        let rows: Vec<&ExampleRow> = active.iter().chain(silent).copied().collect();
        let texts: Vec<String> = rows.iter().map(|r| self.text(r)).collect();
        let read = |description: &str| {
            let readings: Vec<_> = texts.iter().map(|t| reading(description, t)).collect();
            reader.read(&readings, &[])
        };
        let neutral = shared.neutral.get_or_insert_with(|| read(NEUTRAL));
        let mut error = None;
        let records: Vec<WindowScore> = rows
            .iter()
            .zip(read(&job.explanation).iter().zip(neutral.iter()))
            .map(|(r, pair)| {
                let drops = match pair {
                    (Ok(e), Ok(n)) => drops(e, n),
                    (Err(e), _) | (_, Err(e)) => {
                        error.get_or_insert(e.clone());
                        None
                    }
                };
                let mean = drops
                    .as_ref()
                    .and_then(|d| mean(d.iter().map(|&x| f64::from(x))));
                let p = mean.map(|m| m as f32);
                record(
                    job,
                    Scorer::Surprisal,
                    meta(r),
                    None,
                    p,
                    drops.unwrap_or_default(),
                )
            })
            .collect();
        let mean_of = |keep: &dyn Fn(&WindowScore) -> bool| {
            mean(
                records
                    .iter()
                    .filter(|w| keep(w))
                    .filter_map(|w| w.probability.map(f64::from)),
            )
        };
        let silent = mean_of(&|w| !w.truth);
        let versus = |a: Option<f64>| Some(a? - silent?);
        let value = versus(mean_of(&|w| w.truth));
        let bin_value = by_bin(&records, |b| versus(mean_of(&|w| w.truth && w.bin == b)));
        Outcome {
            records,
            value,
            bin_value,
            who: reader.reader_name(),
            settings: reader.reader_name().into(),
            error,
            ..Outcome::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_read_after_its_description() {
        let r = reading(" cats ", "  The cat sat.");
        assert!(r.pieces[0].ends_with("Description: cats\nText:"));
        assert_eq!(r.pieces[1], " The cat sat.");
        assert_eq!(r.scored, vec![1]);
    }

    #[test]
    fn drops_are_explained_less_neutral_log_probabilities() {
        let read = |v: Vec<f32>| Read {
            scored: vec![v],
            probes: vec![],
        };
        let d = drops(&read(vec![-1.0, -0.5]), &read(vec![-3.0, -0.25])).unwrap();
        assert_eq!(d, vec![2.0, -0.25]);
        assert_eq!(drops(&read(vec![-1.0]), &read(vec![-1.0, -2.0])), None);
    }
}
