//! The embedding scorer: no language model is asked. A sentence encoder (the bundled
//! all-MiniLM-L6-v2, run by saescope's own BERT) embeds the explanation and every test window;
//! the cosine between them ranks the windows, and the AUC of that ranking for activating
//! against silent windows is the score. The explanation is embedded as it is, without delphi's
//! instruction prefix, which an encoder trained on symmetric sentence pairs does not expect.

use super::Shared;
use super::classifier::Sample;
use super::outcome::{Context, Outcome, record};
use super::{Job, Scorer};
use saescope_activations::bert::SentenceEncoder;

/// Whatever turns texts into unit vectors.
pub trait Embedder {
    /// Who embeds, for the record.
    fn name(&self) -> String;
    /// One unit vector per text, or why there are none.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String>;
}

impl Embedder for SentenceEncoder {
    fn name(&self) -> String {
        format!("embedding {}", self.dir.display())
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        self.encode(texts, 32).map_err(|e| e.to_string())
    }
}

/// The cosine of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Context<'_> {
    /// The embedding scorer: each window's cosine with the explanation, as its score (none,
    /// a failure, when either could not be embedded).
    pub(super) fn rank(&self, job: &Job, samples: &[Sample], shared: &mut Shared<'_>) -> Outcome {
        let e = self.models.embedder.expect("checked before scoring");
        let windows = shared.embedded.get_or_insert_with(|| {
            let texts: Vec<&str> = samples.iter().map(|x| x.text.as_str()).collect();
            e.embed(&texts)
        });
        let query = e.embed(&[job.explanation.as_str()]);
        let records = samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let cos = match (&query, &*windows) {
                    (Ok(q), Ok(w)) => Some(cosine(&q[0], &w[i])),
                    _ => None,
                };
                record(job, Scorer::Embedding, s.meta(), None, cos, Vec::new())
            })
            .collect();
        Outcome {
            records,
            who: e.name(),
            settings: e.name().into(),
            error: query.err().or_else(|| windows.as_ref().err().cloned()),
            ..Outcome::default()
        }
    }
}
