//! The embedding scorer: no language model is asked. A sentence encoder (the bundled
//! all-MiniLM-L6-v2, run by saescope's own BERT) embeds the explanation and every test window;
//! the cosine between them ranks the windows, and the AUC of that ranking for activating
//! against silent windows is the score. The explanation is embedded as it is, without delphi's
//! instruction prefix, which an encoder trained on symmetric sentence pairs does not expect.

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
