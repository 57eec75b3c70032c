//! The surprisal scorer (delphi's): a model reads each test window after a short description
//! of the texts that follow, once with the explanation and once with a neutral description.
//! A good explanation of a feature makes the windows where it fires easier to predict, and
//! not the others: the score is the mean drop in per-token loss (nats) on activating windows
//! less the mean drop on silent ones. Each window's own drop also ranks it, giving an AUC.
//!
//! The neutral reading of a window does not depend on the explanation, so a latent's windows
//! are read neutrally once for its explanation and its controls.

use crate::read::{Read, Reading};

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

/// The mean of `xs`, `None` when empty.
pub fn mean(xs: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
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
        assert_eq!(mean([1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(mean([]), None);
    }
}
