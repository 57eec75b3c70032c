//! Scores of explanations: `DICT/scores.parquet`, one row per latent, scorer, control and
//! evidence with the metrics of the scorer's answers, and `DICT/score_windows.parquet`, one row
//! per test window asked about, with the truth, the answer and its probability, so any metric
//! can be computed again without asking. The layout is in `store/README.md`.

use crate::error::{Result, StoreError};
use crate::examples::{ExampleKind, kind_code, kind_from_code};
use crate::explanations::{Evidence, parse_evidence};
use crate::features::{Cols, batch, f32s, list_f32, list_field, read_batches, write_table};
use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int8Array, Int16Array, ListArray,
    StringArray, UInt8Array, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field};
use std::path::Path;
use std::sync::Arc;

/// File name of the scores table in a dictionary directory.
pub const SCORES_FILE: &str = "scores.parquet";
/// File name of the per-window records in a dictionary directory.
pub const SCORE_WINDOWS_FILE: &str = "score_windows.parquet";

/// Which explanation a latent was scored with: its own, or a control that tells what its own
/// adds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Control {
    /// The latent's own explanation.
    #[default]
    Real,
    /// Another latent's explanation, scored on this latent's windows.
    Shuffled,
    /// An explanation made without a model from the latent's most frequent activating tokens.
    Baseline,
}

impl Control {
    /// Every control, in the order summaries show them.
    pub const ALL: [Control; 3] = [Control::Real, Control::Shuffled, Control::Baseline];

    /// The name in the tables' `control` column.
    pub fn name(self) -> &'static str {
        match self {
            Control::Real => "real",
            Control::Shuffled => "shuffled",
            Control::Baseline => "baseline",
        }
    }

    /// The control named `s`.
    pub fn parse(s: &str) -> Option<Control> {
        Control::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// What identifies a score: the latent, the scorer, the control and the evidence the scored
/// explanation came from. A table has at most one row of each.
pub type ScoreKey = (u32, String, Control, Evidence);

/// One latent's score by one scorer.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreRow {
    /// The latent scored.
    pub latent: u32,
    /// The scorer: `detection`, `fuzz`, `fuzz_active`.
    pub scorer: String,
    /// Whose explanation it was scored with.
    pub control: Control,
    /// What the latent's own explanation was made from (the control's donor's, for `shuffled`).
    pub evidence: Evidence,
    /// The latent whose explanation was scored (the latent itself unless `shuffled`).
    pub explanation_of: u32,
    /// The explanation scored.
    pub explanation: String,
    /// Who answered: `server <URL> <model>` or `local <model file>`.
    pub model: String,
    /// The scorer's and the model's settings as JSON (never an API key).
    pub settings: String,
    /// Test windows asked about.
    pub windows: u32,
    /// Of those, answered validly.
    pub valid: u32,
    /// Of those, without a valid answer.
    pub failed: u32,
    /// (recall + specificity) / 2 over the valid answers.
    pub balanced_accuracy: Option<f64>,
    /// The same with each failure counted as a wrong answer.
    pub balanced_accuracy_all: Option<f64>,
    /// Precision over the valid answers.
    pub precision: Option<f64>,
    /// Recall over the valid answers.
    pub recall: Option<f64>,
    /// F1 over the valid answers.
    pub f1: Option<f64>,
    /// F1 with each failure counted as a wrong answer.
    pub f1_all: Option<f64>,
    /// Area under the ROC curve of the answers' probabilities; `None` without log-probabilities.
    pub auc: Option<f64>,
    /// Recall of each activation bin's windows (0 the strongest), NaN where a bin had no valid
    /// answer.
    pub bin_recall: Vec<f32>,
    /// AUC of each bin's windows against all the negatives; empty without probabilities.
    pub bin_auc: Vec<f32>,
    /// The scorer's own measure, for the scorers that are not yes/no questions: simulation's
    /// correlation of predicted and true activations; surprisal's loss drop on activating
    /// windows less that on silent ones (nats per token); intervention's rise in the
    /// explanation's log-probability after steered text over clean text (nats per token).
    pub value: Option<f64>,
    /// The same measure for each activation bin's windows (each with all the silent ones);
    /// NaN where a bin has none, empty for the scorers without a measure.
    pub bin_value: Vec<f32>,
}

impl ScoreRow {
    /// The one number that stands for the score where one is wanted (an export's score
    /// record): the scorer's own measure for the scorers that have one (simulation, surprisal,
    /// intervention), else balanced accuracy (the yes/no scorers), else AUC (embedding).
    pub fn headline(&self) -> Option<f64> {
        match self.scorer.as_str() {
            "simulation" | "surprisal" | "intervention" => self.value,
            _ => self.balanced_accuracy.or(self.auc),
        }
    }

    /// The row's key.
    pub fn key(&self) -> ScoreKey {
        (
            self.latent,
            self.scorer.clone(),
            self.control,
            self.evidence,
        )
    }
}

/// One test window as one scorer saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowScore {
    /// The latent scored.
    pub latent: u32,
    /// The scorer.
    pub scorer: String,
    /// Whose explanation it was scored with.
    pub control: Control,
    /// What the scored explanation's latent's explanation was made from.
    pub evidence: Evidence,
    /// Token index (in the run) of the window's first token, as in `examples.parquet`.
    pub start: u64,
    /// Activating, random silent, or neighbour silent.
    pub kind: ExampleKind,
    /// The activation bin (0 the strongest), −1 for a silent window.
    pub bin: i16,
    /// The right answer: the window carries the feature (detection), or its marks are right
    /// (fuzzing).
    pub truth: bool,
    /// The answer; `None` when it could not be parsed.
    pub prediction: Option<bool>,
    /// The window's score, which ranks it for the AUC: the answer's probability of yes from
    /// log-probabilities (detection, fuzzing), the cosine with the explanation (embedding), the
    /// largest predicted activation, 0 to 1 (simulation), the loss drop in nats per token
    /// (surprisal), the rise in the explanation's log-probability (intervention); `None` when
    /// there is none.
    pub probability: Option<f32>,
    /// Per-token numbers, for the scorers that have them: the predicted activation of each
    /// token, 0 to 9 (simulation); each token's loss drop in nats (surprisal); the
    /// explanation's log-probability per token after the clean and the steered text
    /// (intervention, two numbers). Empty otherwise.
    pub values: Vec<f32>,
}

impl WindowScore {
    /// The key of the score this window belongs to.
    pub fn key(&self) -> ScoreKey {
        (
            self.latent,
            self.scorer.clone(),
            self.control,
            self.evidence,
        )
    }
}

fn unique_sorted<T: Clone>(
    path: &Path,
    rows: &[T],
    key: impl Fn(&T) -> ScoreKey,
    one_per_key: bool,
) -> Result<Vec<T>> {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| key(r));
    if one_per_key && let Some(w) = rows.windows(2).find(|w| key(&w[0]) == key(&w[1])) {
        let (latent, scorer, control, evidence) = key(&w[0]);
        return Err(StoreError::Schema {
            path: path.to_owned(),
            message: format!(
                "latent {latent} has two {scorer} scores with the {} explanation from {}",
                control.name(),
                evidence.name()
            ),
        });
    }
    Ok(rows)
}

fn texts<'a, T>(rows: &'a [T], f: impl Fn(&'a T) -> &'a str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
}

fn floats<T>(rows: &[T], f: impl Fn(&T) -> Option<f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(rows.iter().map(f)))
}

/// Writes the scores, sorted by their key, under a temporary name, then renames them into
/// place; two rows with one key are refused.
pub fn write_scores(path: &Path, rows: &[ScoreRow]) -> Result<()> {
    let rows = unique_sorted(path, rows, ScoreRow::key, true)?;
    let opt = |name: &str| Field::new(name, DataType::Float64, true);
    let fields = vec![
        Field::new("latent", DataType::UInt32, false),
        Field::new("scorer", DataType::Utf8, false),
        Field::new("control", DataType::Utf8, false),
        Field::new("evidence", DataType::Utf8, false),
        Field::new("explanation_of", DataType::UInt32, false),
        Field::new("explanation", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("settings", DataType::Utf8, false),
        Field::new("windows", DataType::UInt32, false),
        Field::new("valid", DataType::UInt32, false),
        Field::new("failed", DataType::UInt32, false),
        opt("balanced_accuracy"),
        opt("balanced_accuracy_all"),
        opt("precision"),
        opt("recall"),
        opt("f1"),
        opt("f1_all"),
        opt("auc"),
        list_field("bin_recall", DataType::Float32),
        list_field("bin_auc", DataType::Float32),
        opt("value"),
        list_field("bin_value", DataType::Float32),
    ];
    let u32s = |f: &dyn Fn(&ScoreRow) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        u32s(&|r| r.latent),
        texts(&rows, |r| &r.scorer),
        texts(&rows, |r| r.control.name()),
        texts(&rows, |r| r.evidence.name()),
        u32s(&|r| r.explanation_of),
        texts(&rows, |r| &r.explanation),
        texts(&rows, |r| &r.model),
        texts(&rows, |r| &r.settings),
        u32s(&|r| r.windows),
        u32s(&|r| r.valid),
        u32s(&|r| r.failed),
        floats(&rows, |r| r.balanced_accuracy),
        floats(&rows, |r| r.balanced_accuracy_all),
        floats(&rows, |r| r.precision),
        floats(&rows, |r| r.recall),
        floats(&rows, |r| r.f1),
        floats(&rows, |r| r.f1_all),
        floats(&rows, |r| r.auc),
        list_f32(rows.iter().map(|r| r.bin_recall.clone())),
        list_f32(rows.iter().map(|r| r.bin_auc.clone())),
        floats(&rows, |r| r.value),
        list_f32(rows.iter().map(|r| r.bin_value.clone())),
    ];
    write_table(path, batch(path, fields, columns)?, 4_096)
}

/// Reads the scores; a missing file is no scores yet.
pub fn read_scores(path: &Path) -> Result<Vec<ScoreRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for b in read_batches(path)? {
        let c = Cols { path, batch: &b };
        let u = |name| c.typed::<UInt32Array>(name);
        let s = |name| c.typed::<StringArray>(name);
        let f = |name| c.typed::<Float64Array>(name);
        let (latent, of, windows, valid, failed) = (
            u("latent")?,
            u("explanation_of")?,
            u("windows")?,
            u("valid")?,
            u("failed")?,
        );
        let (scorer, control, evidence) = (s("scorer")?, s("control")?, s("evidence")?);
        let (explanation, model, settings) = (s("explanation")?, s("model")?, s("settings")?);
        let (ba, ba_all, precision, recall) = (
            f("balanced_accuracy")?,
            f("balanced_accuracy_all")?,
            f("precision")?,
            f("recall")?,
        );
        let (f1, f1_all, auc) = (f("f1")?, f("f1_all")?, f("auc")?);
        let (bin_recall, bin_auc) = (c.list("bin_recall")?, c.list("bin_auc")?);
        // Tables written before the scorers with a measure of their own lack these two.
        let (value, bin_value) = (
            c.optional::<Float64Array>("value")?,
            c.optional::<ListArray>("bin_value")?,
        );
        let opt = |a: &Float64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
        for i in 0..b.num_rows() {
            rows.push(ScoreRow {
                latent: latent.value(i),
                scorer: scorer.value(i).to_owned(),
                control: parse_control(path, i, control.value(i))?,
                evidence: parse_evidence(path, i, evidence.value(i))?,
                explanation_of: of.value(i),
                explanation: explanation.value(i).to_owned(),
                model: model.value(i).to_owned(),
                settings: settings.value(i).to_owned(),
                windows: windows.value(i),
                valid: valid.value(i),
                failed: failed.value(i),
                balanced_accuracy: opt(ba, i),
                balanced_accuracy_all: opt(ba_all, i),
                precision: opt(precision, i),
                recall: opt(recall, i),
                f1: opt(f1, i),
                f1_all: opt(f1_all, i),
                auc: opt(auc, i),
                bin_recall: f32s(bin_recall, i),
                bin_auc: f32s(bin_auc, i),
                value: value.and_then(|v| opt(v, i)),
                bin_value: bin_value.map(|l| f32s(l, i)).unwrap_or_default(),
            });
        }
    }
    Ok(rows)
}

fn parse_control(path: &Path, row: usize, name: &str) -> Result<Control> {
    Control::parse(name).ok_or_else(|| StoreError::Schema {
        path: path.to_owned(),
        message: format!("row {row}: control `{name}` is not real, shuffled or baseline"),
    })
}

/// Writes the per-window records, sorted by their score's key (each score's windows in the
/// order given), under a temporary name, then renames them into place.
pub fn write_window_scores(path: &Path, rows: &[WindowScore]) -> Result<()> {
    let rows = unique_sorted(path, rows, WindowScore::key, false)?;
    let fields = vec![
        Field::new("latent", DataType::UInt32, false),
        Field::new("scorer", DataType::Utf8, false),
        Field::new("control", DataType::Utf8, false),
        Field::new("evidence", DataType::Utf8, false),
        Field::new("start", DataType::UInt64, false),
        Field::new("kind", DataType::UInt8, false),
        Field::new("bin", DataType::Int16, false),
        Field::new("truth", DataType::Boolean, false),
        Field::new("prediction", DataType::Int8, true),
        Field::new("probability", DataType::Float32, true),
        list_field("values", DataType::Float32),
    ];
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.latent))),
        texts(&rows, |r| &r.scorer),
        texts(&rows, |r| r.control.name()),
        texts(&rows, |r| r.evidence.name()),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.start))),
        Arc::new(UInt8Array::from_iter_values(
            rows.iter().map(|r| kind_code(r.kind)),
        )),
        Arc::new(Int16Array::from_iter_values(rows.iter().map(|r| r.bin))),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.truth)))),
        Arc::new(Int8Array::from_iter(
            rows.iter().map(|r| r.prediction.map(i8::from)),
        )),
        Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.probability))),
        list_f32(rows.iter().map(|r| r.values.clone())),
    ];
    write_table(path, batch(path, fields, columns)?, 65_536)
}

/// Reads the per-window records; a missing file is none yet.
pub fn read_window_scores(path: &Path) -> Result<Vec<WindowScore>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for b in read_batches(path)? {
        let c = Cols { path, batch: &b };
        let latent = c.typed::<UInt32Array>("latent")?;
        let (scorer, control, evidence) = (
            c.typed::<StringArray>("scorer")?,
            c.typed::<StringArray>("control")?,
            c.typed::<StringArray>("evidence")?,
        );
        let start = c.typed::<UInt64Array>("start")?;
        let kind = c.typed::<UInt8Array>("kind")?;
        let bin = c.typed::<Int16Array>("bin")?;
        let truth = c.typed::<BooleanArray>("truth")?;
        let prediction = c.typed::<Int8Array>("prediction")?;
        let probability = c.typed::<Float32Array>("probability")?;
        let values = c.optional::<ListArray>("values")?;
        for i in 0..b.num_rows() {
            let bad = |message: String| StoreError::Schema {
                path: path.to_owned(),
                message: format!("row {i}: {message}"),
            };
            rows.push(WindowScore {
                latent: latent.value(i),
                scorer: scorer.value(i).to_owned(),
                control: parse_control(path, i, control.value(i))?,
                evidence: parse_evidence(path, i, evidence.value(i))?,
                start: start.value(i),
                kind: kind_from_code(kind.value(i))
                    .ok_or_else(|| bad(format!("unknown kind code {}", kind.value(i))))?,
                bin: bin.value(i),
                truth: truth.value(i),
                prediction: match (prediction.is_null(i), prediction.value(i)) {
                    (true, _) => None,
                    (false, 0) => Some(false),
                    (false, 1) => Some(true),
                    (false, v) => return Err(bad(format!("prediction {v} is neither 0 nor 1"))),
                },
                probability: (!probability.is_null(i)).then(|| probability.value(i)),
                values: values.map(|l| f32s(l, i)).unwrap_or_default(),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(latent: u32, scorer: &str, control: Control) -> ScoreRow {
        ScoreRow {
            latent,
            scorer: scorer.into(),
            control,
            evidence: Evidence::Activations,
            explanation_of: latent,
            explanation: "plural nouns".into(),
            model: "local m".into(),
            settings: "{}".into(),
            windows: 10,
            valid: 9,
            failed: 1,
            balanced_accuracy: Some(0.75),
            balanced_accuracy_all: Some(0.7),
            precision: Some(0.8),
            recall: None,
            f1: Some(0.6),
            f1_all: Some(0.5),
            auc: None,
            bin_recall: vec![1.0, f32::NAN],
            bin_auc: vec![],
            value: None,
            bin_value: vec![],
        }
    }

    #[test]
    fn scores_and_window_records_survive_the_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SCORES_FILE);
        assert!(read_scores(&path).unwrap().is_empty());
        let rows = vec![
            score(5, "fuzz", Control::Real),
            score(2, "detection", Control::Shuffled),
            ScoreRow {
                auc: Some(0.9),
                bin_auc: vec![0.5],
                value: Some(0.25),
                bin_value: vec![0.5, f32::NAN],
                ..score(2, "detection", Control::Real)
            },
        ];
        write_scores(&path, &rows).unwrap();
        let back = read_scores(&path).unwrap();
        assert_eq!(back.len(), 3);
        // Sorted by key: latent 2's real score before its shuffled one, then latent 5.
        assert_eq!(back[0].auc, Some(0.9));
        assert_eq!(back[0].value, Some(0.25));
        assert!(back[0].bin_value[1].is_nan());
        assert_eq!(back[1].value, None);
        assert_eq!(back[1].control, Control::Shuffled);
        assert_eq!(back[2].latent, 5);
        assert!(back[2].bin_recall[1].is_nan());
        assert_eq!(back[2].recall, None);
        let twice = [rows[0].clone(), rows[0].clone()];
        let e = write_scores(&path, &twice).unwrap_err().to_string();
        assert!(e.contains("latent 5 has two fuzz scores"), "{e}");
        assert_eq!(read_scores(&path).unwrap().len(), 3, "left intact");

        let wpath = dir.path().join(SCORE_WINDOWS_FILE);
        let w = WindowScore {
            latent: 2,
            scorer: "detection".into(),
            control: Control::Baseline,
            evidence: Evidence::Effects,
            start: 640,
            kind: ExampleKind::Neighbour,
            bin: -1,
            truth: false,
            prediction: None,
            probability: None,
            values: vec![],
        };
        let w2 = WindowScore {
            kind: ExampleKind::Activating,
            bin: 3,
            truth: true,
            prediction: Some(true),
            probability: Some(0.75),
            values: vec![0.0, 4.5],
            ..w.clone()
        };
        write_window_scores(&wpath, &[w.clone(), w2.clone()]).unwrap();
        assert_eq!(read_window_scores(&wpath).unwrap(), vec![w, w2]);
    }
}
