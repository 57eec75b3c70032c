//! Explanations of a dictionary's latents: `DICT/explanations.parquet`, one row per latent and
//! kind of evidence explained (or tried), with the explainer and its settings, so a dataset
//! says how it was made.

use crate::error::{Result, StoreError};
use crate::features::{Cols, batch, read_batches, write_table};
use arrow::array::{ArrayRef, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field};
use std::path::Path;
use std::sync::Arc;

/// File name of the explanations table in a dictionary directory.
pub const EXPLANATIONS_FILE: &str = "explanations.parquet";

/// What an explanation was made from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Evidence {
    /// Where the latent fires: its activating windows (the input side).
    #[default]
    Activations,
    /// What the latent does when pushed on: the next tokens it makes likelier (the output side).
    Effects,
}

impl Evidence {
    /// The name in the table's `evidence` column.
    pub fn name(self) -> &'static str {
        match self {
            Evidence::Activations => "activations",
            Evidence::Effects => "effects",
        }
    }

    /// The evidence named `s`.
    pub fn parse(s: &str) -> Option<Evidence> {
        [Evidence::Activations, Evidence::Effects]
            .into_iter()
            .find(|e| e.name() == s)
    }
}

/// One latent's explanation from one kind of evidence, or the record of failing to get one.
#[derive(Clone, Debug, PartialEq)]
pub struct ExplanationRow {
    /// The latent.
    pub latent: u32,
    /// What the explanation was made from; a latent has at most one row of each.
    pub evidence: Evidence,
    /// The explanation; `None` when no answer could be parsed.
    pub explanation: Option<String>,
    /// Who explained it: `server <URL> <model>` or `local <model file>`.
    pub explainer: String,
    /// The explainer's and the prompt's settings, as JSON (never an API key).
    pub settings: String,
    /// SHA-256 of the prompt's messages, to tell which prompt an explanation answers.
    pub prompt_hash: String,
    /// Activating windows shown.
    pub examples: u32,
    /// Attempts that gave no explanation, over every run of `explain` on this latent.
    pub failures: u32,
    /// The last answer as received (or the error, when there was none).
    pub raw: String,
}

/// Writes the rows, sorted by latent then evidence, under a temporary name, then renames them
/// into place.
pub fn write_explanations(path: &Path, rows: &[ExplanationRow]) -> Result<()> {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| (r.latent, r.evidence));
    if let Some(w) = rows
        .windows(2)
        .find(|w| (w[0].latent, w[0].evidence) == (w[1].latent, w[1].evidence))
    {
        return Err(StoreError::Schema {
            path: path.to_owned(),
            message: format!(
                "latent {} has two rows explained from {}",
                w[0].latent,
                w[0].evidence.name()
            ),
        });
    }
    let text = |f: &dyn Fn(&ExplanationRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let fields = vec![
        Field::new("latent", DataType::UInt32, false),
        Field::new("evidence", DataType::Utf8, false),
        Field::new("explanation", DataType::Utf8, true),
        Field::new("explainer", DataType::Utf8, false),
        Field::new("settings", DataType::Utf8, false),
        Field::new("prompt_hash", DataType::Utf8, false),
        Field::new("examples", DataType::UInt32, false),
        Field::new("failures", DataType::UInt32, false),
        Field::new("raw", DataType::Utf8, false),
    ];
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.latent))),
        text(&|r| r.evidence.name()),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.explanation.as_deref()),
        )),
        text(&|r| &r.explainer),
        text(&|r| &r.settings),
        text(&|r| &r.prompt_hash),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.examples),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.failures),
        )),
        text(&|r| &r.raw),
    ];
    write_table(path, batch(path, fields, columns)?, 4_096)
}

/// Row `row`'s evidence named `name` in the table at `path`, or an error naming both.
pub(crate) fn parse_evidence(path: &Path, row: usize, name: &str) -> Result<Evidence> {
    Evidence::parse(name).ok_or_else(|| StoreError::Schema {
        path: path.to_owned(),
        message: format!("row {row}: evidence `{name}` is neither `activations` nor `effects`"),
    })
}

/// Reads the table; a missing file is no explanations yet, and a table without the `evidence`
/// column (written before it existed) holds explanations from activations.
pub fn read_explanations(path: &Path) -> Result<Vec<ExplanationRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for b in read_batches(path)? {
        let c = Cols { path, batch: &b };
        let latent = c.typed::<UInt32Array>("latent")?;
        let evidence = c.optional::<StringArray>("evidence")?;
        let explanation = c.typed::<StringArray>("explanation")?;
        let explainer = c.typed::<StringArray>("explainer")?;
        let settings = c.typed::<StringArray>("settings")?;
        let hash = c.typed::<StringArray>("prompt_hash")?;
        let examples = c.typed::<UInt32Array>("examples")?;
        let failures = c.typed::<UInt32Array>("failures")?;
        let raw = c.typed::<StringArray>("raw")?;
        for i in 0..b.num_rows() {
            let evidence = match evidence.map(|e| e.value(i)) {
                None => Evidence::Activations,
                Some(name) => parse_evidence(path, i, name)?,
            };
            rows.push(ExplanationRow {
                latent: latent.value(i),
                evidence,
                explanation: (!arrow::array::Array::is_null(explanation, i))
                    .then(|| explanation.value(i).to_owned()),
                explainer: explainer.value(i).to_owned(),
                settings: settings.value(i).to_owned(),
                prompt_hash: hash.value(i).to_owned(),
                examples: examples.value(i),
                failures: failures.value(i),
                raw: raw.value(i).to_owned(),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_survive_the_round_trip_sorted_by_latent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EXPLANATIONS_FILE);
        assert!(read_explanations(&path).unwrap().is_empty());
        let row = |latent, explanation: Option<&str>| ExplanationRow {
            latent,
            evidence: Evidence::Activations,
            explanation: explanation.map(str::to_owned),
            explainer: "server http://127.0.0.1:1/v1 m".into(),
            settings: "{}".into(),
            prompt_hash: "ab".into(),
            examples: 40,
            failures: u32::from(explanation.is_none()),
            raw: "EXPLANATION: x".into(),
        };
        let effects = ExplanationRow {
            evidence: Evidence::Effects,
            ..row(2, Some("says plural nouns"))
        };
        let rows = vec![row(9, None), effects.clone(), row(2, Some("plural nouns"))];
        write_explanations(&path, &rows).unwrap();
        let back = read_explanations(&path).unwrap();
        assert_eq!(back, vec![rows[2].clone(), effects, rows[0].clone()]);
        let e = write_explanations(&path, &[row(2, None), row(2, None)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("latent 2 has two rows explained from activations"),
            "{e}"
        );
        assert_eq!(
            read_explanations(&path).unwrap(),
            back,
            "the table is intact"
        );
    }
}
