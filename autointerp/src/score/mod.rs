//! Scoring explanations: each latent's explanation (and its controls, [`controls`]) is put to a
//! chat model ([`classifier`]: detection, fuzzing) or a sentence encoder ([`embedding`]) against
//! the latent's test windows from `examples.parquet`, which the explainer never saw; the answers are kept window by window in `score_windows.parquet` and summed up
//! per latent, scorer and control in `scores.parquet` ([`summary`] makes a run's means).
//!
//! The tables are rewritten after every chunk (the window records first, so a score never
//! names records that are not there); with `resume`, scores that have valid answers are kept
//! and not asked again. A control is scored on exactly the windows, marks and order the
//! latent's own explanation is, so the two differ only in the explanation.

pub mod classifier;
pub mod controls;
pub mod embedding;
pub mod summary;

use crate::explain::Explainer;
use crate::metrics::{Confusion, auc};
use crate::wire::Message;
use crate::{ChatReply, ChatRequest};
use classifier::{Question, Sample};
use embedding::{Embedder, cosine};
use saescope_store::examples::{ExampleKind, ExampleRow, ExampleSet};
use saescope_store::explanations::Evidence;
use saescope_store::scores::{
    Control, ScoreKey, ScoreRow, WindowScore, read_scores, read_window_scores, write_scores,
    write_window_scores,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A way to score an explanation against test windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scorer {
    /// A model says which unmarked windows carry the feature.
    Detection,
    /// A model says whether marks sit on the feature's tokens; wrong marks on silent windows.
    Fuzz,
    /// The same with wrong marks inside activating windows.
    FuzzActive,
    /// A sentence encoder ranks the windows by their cosine with the explanation.
    Embedding,
}

impl Scorer {
    /// Every scorer.
    pub const ALL: [Scorer; 4] = [
        Scorer::Detection,
        Scorer::Fuzz,
        Scorer::FuzzActive,
        Scorer::Embedding,
    ];

    /// The name in the tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scorer::Detection => "detection",
            Scorer::Fuzz => "fuzz",
            Scorer::FuzzActive => "fuzz_active",
            Scorer::Embedding => "embedding",
        }
    }

    /// The scorer named `s`.
    pub fn parse(s: &str) -> Option<Scorer> {
        Scorer::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Windows it asks about of a latent's test windows: fuzzing's active variant shows
    /// activating windows only.
    fn windows(self, (active, silent): &(Vec<&ExampleRow>, Vec<&ExampleRow>)) -> usize {
        active.len()
            + match self {
                Scorer::FuzzActive => 0,
                Scorer::Detection | Scorer::Fuzz | Scorer::Embedding => silent.len(),
            }
    }

    fn question(self) -> Question {
        match self {
            Scorer::Detection => Question::Detection,
            Scorer::Fuzz => Question::Fuzz,
            Scorer::FuzzActive => Question::FuzzActive,
            // The windows as detection shows them: plain text, activating and silent.
            Scorer::Embedding => Question::Detection,
        }
    }

    /// Whether it asks a chat model (the embedding scorer asks none).
    pub fn asks_model(self) -> bool {
        self != Scorer::Embedding
    }
}

/// How scoring runs. Serialised into each score's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// Windows shown in one prompt (default 5).
    pub per_prompt: usize,
    /// Activating test windows scored per latent at most, spread over the bins (default 50).
    pub positives: usize,
    /// Silent test windows scored per latent at most, hard negatives first (default 50).
    pub negatives: usize,
    /// A token is active, for the marks, above this share of its window's largest (default 0.3).
    pub mark_share: f32,
    /// Tokens an answer may have (default 32).
    pub max_tokens: usize,
    /// Alternatives asked for at each answer token, for probabilities (default 5; 0: none).
    pub top_logprobs: usize,
    /// Scores (latent, scorer, control) asked between two saves of the tables (default 8).
    pub chunk: usize,
    /// Begin each answer with `[` as a final assistant message (servers that continue one;
    /// the local model always does).
    pub prefill: bool,
    /// Seed of the windows' order and of the wrong marks.
    pub seed: u64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            per_prompt: 5,
            positives: 50,
            negatives: 50,
            mark_share: 0.3,
            max_tokens: 32,
            top_logprobs: 5,
            chunk: 8,
            prefill: false,
            seed: 0,
        }
    }
}

/// One explanation to score a latent with.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// The latent whose windows are scored.
    pub latent: u32,
    /// Whose explanation it is.
    pub control: Control,
    /// What the latent's own explanation was made from.
    pub evidence: Evidence,
    /// The latent the explanation is of.
    pub explanation_of: u32,
    /// The explanation.
    pub explanation: String,
}

/// Each latent's test windows: activating ones, and silent ones hard negatives first.
pub type TestWindows<'a> = BTreeMap<u32, (Vec<&'a ExampleRow>, Vec<&'a ExampleRow>)>;

/// Groups `examples`' test windows by latent, keeping at most `positives` activating windows
/// (taken from the bins in turn, strongest bin first) and `negatives` silent ones (hard
/// negatives first).
pub fn test_windows(
    examples: &[ExampleRow],
    positives: usize,
    negatives: usize,
) -> TestWindows<'_> {
    let mut out: TestWindows<'_> = BTreeMap::new();
    for r in examples.iter().filter(|r| r.set == ExampleSet::Test) {
        let e = out.entry(r.latent).or_default();
        match r.kind {
            ExampleKind::Activating => e.0.push(r),
            ExampleKind::Neighbour | ExampleKind::Random => e.1.push(r),
        }
    }
    for (active, silent) in out.values_mut() {
        let mut bins: BTreeMap<i16, Vec<&ExampleRow>> = BTreeMap::new();
        for r in active.drain(..) {
            bins.entry(r.bin).or_default().push(r);
        }
        let mut queues: Vec<std::vec::IntoIter<&ExampleRow>> =
            bins.into_values().map(Vec::into_iter).collect();
        while active.len() < positives {
            let before = active.len();
            for q in &mut queues {
                if active.len() < positives
                    && let Some(r) = q.next()
                {
                    active.push(r);
                }
            }
            if active.len() == before {
                break;
            }
        }
        active.sort_by_key(|r| (r.bin, r.start));
        silent.sort_by_key(|r| (r.kind != ExampleKind::Neighbour, r.start));
        silent.truncate(negatives);
    }
    out
}

/// What a run of [`score`] did.
#[derive(Debug, Default, PartialEq)]
pub struct ScoreReport {
    /// Scores computed in this run.
    pub scored: usize,
    /// Windows asked about in this run.
    pub windows: usize,
    /// Of those, without a valid answer.
    pub failed: usize,
    /// Scores in this run with probabilities (hence AUC).
    pub with_probabilities: usize,
    /// Scores kept from before (`resume`).
    pub kept: usize,
    /// Latents asked for that have no test windows.
    pub without_windows: Vec<u32>,
}

/// Where the tables go.
pub struct Tables<'a> {
    /// `scores.parquet`.
    pub scores: &'a Path,
    /// `score_windows.parquet`.
    pub windows: &'a Path,
}

/// Scores every job with every scorer against the latents' `tests` windows, asking `model`
/// (and embedding with `embedder`, which the embedding scorer needs), and keeps the tables up
/// to date; `progress` gets (prompts answered, prompts to ask, windows failed so far).
#[allow(clippy::too_many_arguments)]
pub fn score(
    tests: &TestWindows<'_>,
    token_text: &dyn Fn(u32) -> String,
    jobs: &[Job],
    scorers: &[Scorer],
    model: &dyn Explainer,
    embedder: Option<&dyn Embedder>,
    cfg: &ScoreConfig,
    resume: bool,
    tables: &Tables<'_>,
    progress: &(dyn Fn(usize, usize, usize) + Sync),
) -> Result<ScoreReport, saescope_store::StoreError> {
    let mut scores: BTreeMap<ScoreKey, ScoreRow> = read_scores(tables.scores)?
        .into_iter()
        .map(|r| (r.key(), r))
        .collect();
    let mut windows: BTreeMap<ScoreKey, Vec<WindowScore>> = BTreeMap::new();
    for w in read_window_scores(tables.windows)? {
        windows.entry(w.key()).or_default().push(w);
    }
    if embedder.is_none() && scorers.contains(&Scorer::Embedding) {
        return Err(saescope_store::StoreError::InvalidInput(
            "the embedding scorer needs a sentence encoder".into(),
        ));
    }
    let mut report = ScoreReport::default();
    let mut todo: Vec<(&Job, Scorer)> = Vec::new();
    for job in jobs {
        if tests.get(&job.latent).is_none_or(|t| t.0.is_empty()) {
            if !report.without_windows.contains(&job.latent) {
                report.without_windows.push(job.latent);
            }
            continue;
        }
        for &s in scorers {
            let key = (job.latent, s.name().to_owned(), job.control, job.evidence);
            if resume && scores.get(&key).is_some_and(|r| r.valid > 0) {
                report.kept += 1;
                continue;
            }
            todo.push((job, s));
        }
    }
    let per = cfg.per_prompt.max(1);
    let total: usize = todo
        .iter()
        .filter(|(_, s)| s.asks_model())
        .map(|&(j, s)| s.windows(&tests[&j.latent]).div_ceil(per))
        .sum();
    let settings = |s: Scorer| {
        let who = match (s, embedder) {
            (Scorer::Embedding, Some(e)) => serde_json::json!(e.name()),
            _ => model.settings(),
        };
        serde_json::json!({ "scorer": s.name(), "score": cfg, "model": who }).to_string()
    };
    let name = |s: Scorer| match (s, embedder) {
        (Scorer::Embedding, Some(e)) => e.name(),
        _ => model.name(),
    };
    // Each latent's windows are embedded once, for its explanation and its controls alike; the
    // jobs come latent by latent (as [`jobs`] makes them), so only the current latent's vectors
    // are kept: memory stays one latent's whatever the run (jobs in another order still score
    // right, embedding a latent's windows again).
    let mut embedded: HashMap<u32, Result<Vec<Vec<f32>>, String>> = HashMap::new();
    let mut asked = 0;
    for chunk in todo.chunks(cfg.chunk.max(1)) {
        let mut plans = Vec::with_capacity(chunk.len());
        let mut requests = Vec::new();
        for &(job, s) in chunk {
            let (active, silent) = &tests[&job.latent];
            let seed = cfg.seed ^ (u64::from(job.latent) << 8) ^ s as u64;
            let samples = classifier::samples(
                s.question(),
                active,
                silent,
                token_text,
                cfg.mark_share,
                seed,
            );
            let first = requests.len();
            for batch in samples.chunks(per).filter(|_| s.asks_model()) {
                let refs: Vec<&Sample> = batch.iter().collect();
                requests.push(request(
                    classifier::messages(s.question(), &job.explanation, &refs),
                    cfg,
                ));
            }
            plans.push((job, s, samples, first));
        }
        let failed_so_far = report.failed;
        let base = asked;
        let answers = model.answer(&requests, &|n| progress(base + n, total, failed_so_far));
        asked += requests.len();
        for (job, s, samples, first) in plans {
            let (rows, row) = match (s, embedder) {
                (Scorer::Embedding, Some(e)) => {
                    embedded.retain(|&latent, _| latent == job.latent);
                    let windows = embedded.entry(job.latent).or_insert_with(|| {
                        let texts: Vec<&str> = samples.iter().map(|x| x.text.as_str()).collect();
                        e.embed(&texts)
                    });
                    let rows = rank(job, &samples, windows, e);
                    let row = metrics_row(job, s, &rows, &name(s), &settings(s));
                    (rows, row)
                }
                _ => {
                    let said = Said {
                        answers: &answers[first..],
                        per,
                        prefill: cfg.prefill,
                    };
                    judge(job, s, &samples, &said, &name(s), &settings(s))
                }
            };
            report.scored += 1;
            report.windows += rows.len();
            report.failed += row.failed as usize;
            report.with_probabilities += usize::from(row.auc.is_some());
            windows.insert(row.key(), rows);
            scores.insert(row.key(), row);
        }
        let all_windows: Vec<WindowScore> = windows.values().flatten().cloned().collect();
        write_window_scores(tables.windows, &all_windows)?;
        let all: Vec<ScoreRow> = scores.values().cloned().collect();
        write_scores(tables.scores, &all)?;
        progress(asked, total, report.failed);
    }
    Ok(report)
}

fn request(mut messages: Vec<Message>, cfg: &ScoreConfig) -> ChatRequest {
    if cfg.prefill {
        messages.push(Message::new("assistant", "["));
    }
    ChatRequest {
        messages,
        max_tokens: cfg.max_tokens,
        temperature: 0.0,
        seed: None,
        top_logprobs: (cfg.top_logprobs > 0).then_some(cfg.top_logprobs),
    }
}

/// The answers to one job's prompts.
struct Said<'a> {
    /// From the job's first prompt on.
    answers: &'a [Result<ChatReply, String>],
    /// Windows a prompt.
    per: usize,
    /// Whether the answers were begun with `[` for the model (a server then leaves it out).
    prefill: bool,
}

/// The window records and the score of one job's answers.
fn judge(
    job: &Job,
    scorer: Scorer,
    samples: &[Sample],
    said: &Said<'_>,
    model: &str,
    settings: &str,
) -> (Vec<WindowScore>, ScoreRow) {
    let mut records = Vec::with_capacity(samples.len());
    for (batch, answer) in samples.chunks(said.per).zip(said.answers) {
        let parsed = answer.as_ref().ok().and_then(|reply| {
            let text = if said.prefill && !reply.text.trim_start().starts_with('[') {
                format!("[{}", reply.text)
            } else {
                reply.text.clone()
            };
            let said = classifier::parse_answer(&text, batch.len())?;
            Some((said, classifier::probabilities(reply, batch.len())))
        });
        for (i, s) in batch.iter().enumerate() {
            records.push(record(
                job,
                scorer,
                s,
                parsed.as_ref().map(|p| p.0[i]),
                parsed.as_ref().and_then(|p| p.1.as_ref().map(|q| q[i])),
            ));
        }
    }
    let row = metrics_row(job, scorer, &records, model, settings);
    (records, row)
}

/// The window records of the embedding scorer: each window's cosine with the explanation, as
/// its score (none, a failure, when either could not be embedded).
fn rank(
    job: &Job,
    samples: &[Sample],
    windows: &Result<Vec<Vec<f32>>, String>,
    embedder: &dyn Embedder,
) -> Vec<WindowScore> {
    let query = embedder.embed(&[job.explanation.as_str()]);
    samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let cos = match (&query, windows) {
                (Ok(q), Ok(w)) => Some(cosine(&q[0], &w[i])),
                _ => None,
            };
            record(job, Scorer::Embedding, s, None, cos)
        })
        .collect()
}

/// One window's record.
fn record(
    job: &Job,
    scorer: Scorer,
    s: &Sample,
    prediction: Option<bool>,
    probability: Option<f32>,
) -> WindowScore {
    WindowScore {
        latent: job.latent,
        scorer: scorer.name().to_owned(),
        control: job.control,
        evidence: job.evidence,
        start: s.start,
        kind: s.kind,
        bin: s.bin,
        truth: s.truth,
        prediction,
        probability,
    }
}

/// A score from its window records. A classifier's windows are valid when answered; the
/// embedding scorer's when scored, and it has no yes/no answers, so no confusion rates.
pub fn metrics_row(
    job: &Job,
    scorer: Scorer,
    records: &[WindowScore],
    model: &str,
    settings: &str,
) -> ScoreRow {
    let classifier = scorer.asks_model();
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
    }
}

/// The jobs for `latents` from their explanations from `evidence`: each latent's own, and with
/// `controls` a shuffled one (another latent's, [`controls::shuffled`]) and the baseline made
/// by `baseline`. Latents without an explanation get no job.
pub fn jobs(
    explanations: &HashMap<u32, String>,
    latents: &[u32],
    evidence: Evidence,
    controls: bool,
    baseline: &dyn Fn(u32) -> Option<String>,
    seed: u64,
) -> Vec<Job> {
    let own: Vec<(u32, String)> = latents
        .iter()
        .filter_map(|&f| Some((f, explanations.get(&f)?.clone())))
        .collect();
    let mut out: Vec<Job> = own
        .iter()
        .map(|(f, e)| Job {
            latent: *f,
            control: Control::Real,
            evidence,
            explanation_of: *f,
            explanation: e.clone(),
        })
        .collect();
    if controls {
        for (latent, donor, explanation) in controls::shuffled(&own, seed) {
            out.push(Job {
                latent,
                control: Control::Shuffled,
                evidence,
                explanation_of: donor,
                explanation,
            });
        }
        for (f, _) in &own {
            if let Some(explanation) = baseline(*f) {
                out.push(Job {
                    latent: *f,
                    control: Control::Baseline,
                    evidence,
                    explanation_of: *f,
                    explanation,
                });
            }
        }
    }
    out.sort_by_key(|j| (j.latent, j.control));
    out
}
