//! What a job scored, in common form for every scorer: its window records (`score_windows.parquet`),
//! its own measure where the scorer has one, and who scored it how ([`Outcome`]); what a latent's
//! explanation and its controls share (`Shared`, in the parent module); the yes/no scorers' records from their
//! answers ([`judge`]); and a score's row of metrics from its records ([`metrics_row`]). Each
//! other scorer makes its records in its own module, as a method of [`Context`].

use super::classifier::{self, Sample};
use super::{Job, Models, ScoreConfig, Scorer};
use crate::ChatReply;
use crate::metrics::{Confusion, auc};
use crate::read::Reader;
use saescope_store::examples::{ExampleKind, ExampleRow};
use saescope_store::scores::{ScoreRow, WindowScore};

/// What one job scored: its window records, its own measure for the scorers with one, who
/// scored, and how.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) records: Vec<WindowScore>,
    pub(super) value: Option<f64>,
    pub(super) bin_value: Vec<f32>,
    /// Who scored, for the `model` column.
    pub(super) who: String,
    /// Their settings, for the record.
    pub(super) settings: serde_json::Value,
    /// How the predictions were read, for the scorers that can read them more than one way.
    pub(super) mode: Option<&'static str>,
    /// Why some or all windows failed, when known.
    pub(super) error: Option<String>,
}

/// What every job is scored with.
pub(super) struct Context<'a> {
    pub(super) token_text: &'a dyn Fn(u32) -> String,
    pub(super) models: &'a Models<'a>,
    pub(super) cfg: &'a ScoreConfig,
}

impl<'a> Context<'a> {
    pub(super) fn tokens(&self, r: &ExampleRow) -> Vec<String> {
        r.token_ids.iter().map(|&t| (self.token_text)(t)).collect()
    }

    pub(super) fn text(&self, r: &ExampleRow) -> String {
        self.tokens(r).concat()
    }

    pub(super) fn reader(&self) -> &'a dyn Reader {
        self.models.reader.expect("checked before scoring")
    }
}

/// `f` of each activation bin present in `records` (0 the strongest), NaN where it has none.
pub(super) fn by_bin(records: &[WindowScore], f: impl Fn(i16) -> Option<f64>) -> Vec<f32> {
    let bins = records.iter().map(|w| w.bin + 1).max().unwrap_or(0).max(0);
    (0..bins)
        .map(|b| f(b).map_or(f32::NAN, |v| v as f32))
        .collect()
}

/// A test window's key and kind, as its records carry them: (start, kind, bin, activating).
pub(super) type Meta = (u64, ExampleKind, i16, bool);

pub(super) fn meta(r: &ExampleRow) -> Meta {
    (r.start, r.kind, r.bin, r.kind == ExampleKind::Activating)
}

impl Sample {
    pub(super) fn meta(&self) -> Meta {
        (self.start, self.kind, self.bin, self.truth)
    }
}

/// The answers to one job's prompts.
pub(super) struct Said<'a> {
    /// From the job's first prompt on.
    pub(super) answers: &'a [Result<ChatReply, String>],
    /// Windows a prompt.
    pub(super) per: usize,
    /// Whether the answers were begun with `[` for the model (a server then leaves it out).
    pub(super) prefill: bool,
}

/// The window records of one job's answers to yes/no questions.
pub(super) fn judge(job: &Job, scorer: Scorer, samples: &[Sample], said: &Said<'_>) -> Outcome {
    let mut records = Vec::with_capacity(samples.len());
    let mut error = None;
    for (batch, answer) in samples.chunks(said.per).zip(said.answers) {
        if let Err(e) = answer {
            error.get_or_insert(e.clone());
        }
        let parsed = answer.as_ref().ok().and_then(|reply| {
            let text = classifier::answer_text(reply, said.prefill);
            let said = classifier::parse_answer(&text, batch.len())?;
            Some((said, classifier::probabilities(reply, batch.len())))
        });
        for (i, s) in batch.iter().enumerate() {
            records.push(record(
                job,
                scorer,
                s.meta(),
                parsed.as_ref().map(|p| p.0[i]),
                parsed.as_ref().and_then(|p| p.1.as_ref().map(|q| q[i])),
                Vec::new(),
            ));
        }
    }
    Outcome {
        records,
        error,
        ..Outcome::default()
    }
}

/// One window's record.
pub(super) fn record(
    job: &Job,
    scorer: Scorer,
    (start, kind, bin, truth): Meta,
    prediction: Option<bool>,
    probability: Option<f32>,
    values: Vec<f32>,
) -> WindowScore {
    WindowScore {
        latent: job.latent,
        scorer: scorer.name().to_owned(),
        control: job.control,
        evidence: job.evidence,
        start,
        kind,
        bin,
        truth,
        prediction,
        probability,
        values,
    }
}

/// A score from its window records. A yes/no scorer's windows are valid when answered; the
/// other scorers' when scored, and they have no yes/no answers, so no confusion rates (their
/// own measure, [`ScoreRow::value`], is set by the caller).
pub fn metrics_row(
    job: &Job,
    scorer: Scorer,
    records: &[WindowScore],
    model: &str,
    settings: &str,
) -> ScoreRow {
    let classifier = scorer.yes_no();
    let c = match classifier {
        true => Confusion::of(records.iter().map(|w| (w.truth, w.prediction))),
        false => Confusion::default(),
    };
    let strict = c.strict();
    let scored = records.iter().filter(|w| w.probability.is_some()).count();
    let (valid, failed) = match classifier {
        true => (c.valid(), c.failed()),
        false => (scored, records.len() - scored),
    };
    let probable = |ws: &mut dyn Iterator<Item = &WindowScore>| -> Option<f64> {
        let (labels, scores): (Vec<bool>, Vec<f64>) = ws
            .filter_map(|w| Some((w.truth, f64::from(w.probability?))))
            .unzip();
        auc(&labels, &scores)
    };
    let bins = records.iter().map(|w| w.bin + 1).max().unwrap_or(0).max(0) as usize;
    let in_bin = |b: usize| {
        let b = b as i16;
        move |w: &&WindowScore| w.truth && w.bin == b
    };
    let bin_recall = (0..bins)
        .filter(|_| classifier)
        .map(|b| {
            let cb = Confusion::of(
                records
                    .iter()
                    .filter(in_bin(b))
                    .map(|w| (true, w.prediction)),
            );
            cb.recall().map_or(f32::NAN, |r| r as f32)
        })
        .collect();
    let overall = probable(&mut records.iter());
    let bin_auc = match overall {
        None => Vec::new(),
        Some(_) => (0..bins)
            .map(|b| {
                let mut ws = records.iter().filter(|w| !w.truth || in_bin(b)(w));
                probable(&mut ws).map_or(f32::NAN, |a| a as f32)
            })
            .collect(),
    };
    ScoreRow {
        latent: job.latent,
        scorer: scorer.name().to_owned(),
        control: job.control,
        evidence: job.evidence,
        explanation_of: job.explanation_of,
        explanation: job.explanation.clone(),
        model: model.to_owned(),
        settings: settings.to_owned(),
        windows: records.len() as u32,
        valid: valid as u32,
        failed: failed as u32,
        balanced_accuracy: c.balanced_accuracy(),
        balanced_accuracy_all: strict.balanced_accuracy(),
        precision: c.precision(),
        recall: c.recall(),
        f1: c.f1(),
        f1_all: strict.f1(),
        auc: overall,
        bin_recall,
        bin_auc,
        value: None,
        bin_value: Vec::new(),
    }
}
