//! Scoring explanations: each latent's explanation (and its controls, [`controls`]) is put
//! against the latent's test windows from `examples.parquet`, which the explainer never saw, by
//! a chat model ([`classifier`]: detection, fuzzing), a sentence encoder ([`embedding`]), a
//! model predicting activations ([`simulation`]) or reading the windows after it
//! ([`surprisal`]), or by pushing the latent and reading the explanation after what it makes
//! the model write ([`intervention`]). The results are kept window by window in
//! `score_windows.parquet` and summed up per latent, scorer and control in `scores.parquet`
//! (each scorer's records and measure in common form by `outcome`; [`summary`] makes a run's
//! means).
//!
//! The tables are rewritten after every chunk (the window records first, so a score never
//! names records that are not there); with `resume`, scores that have valid answers are kept
//! and not asked again. A control is scored on exactly the windows, marks and order the
//! latent's own explanation is, so the two differ only in the explanation.

pub mod classifier;
pub mod controls;
pub mod embedding;
pub mod intervention;
mod outcome;
pub mod simulation;
pub mod surprisal;

pub use outcome::metrics_row;
pub use saescope_stats::summary;

use crate::ChatRequest;
use crate::explain::Explainer;
use crate::read::Read;
use crate::read::Reader;
use crate::wire::Message;
use classifier::{Question, Sample};
use embedding::Embedder;
use intervention::{InterventionConfig, Steered, Steerer};
use outcome::{Context, Outcome, Said, judge};
use saescope_store::examples::{ExampleKind, ExampleRow, ExampleSet};
use saescope_store::explanations::Evidence;
use saescope_store::scores::{
    Control, ScoreKey, ScoreRow, WindowScore, read_scores, read_window_scores, write_scores,
    write_window_scores,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// A model predicts each token's activation from the explanation ([`simulation`]).
    Simulation,
    /// A model reads the windows after the explanation, against a neutral description
    /// ([`surprisal`]).
    Surprisal,
    /// The latent is pushed and a model reads the explanation after the pushed text, against
    /// the clean text ([`intervention`]).
    Intervention,
}

impl Scorer {
    /// Every scorer.
    pub const ALL: [Scorer; 7] = [
        Scorer::Detection,
        Scorer::Fuzz,
        Scorer::FuzzActive,
        Scorer::Embedding,
        Scorer::Simulation,
        Scorer::Surprisal,
        Scorer::Intervention,
    ];

    /// The name in the tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scorer::Detection => "detection",
            Scorer::Fuzz => "fuzz",
            Scorer::FuzzActive => "fuzz_active",
            Scorer::Embedding => "embedding",
            Scorer::Simulation => "simulation",
            Scorer::Surprisal => "surprisal",
            Scorer::Intervention => "intervention",
        }
    }

    /// The scorer named `s`.
    pub fn parse(s: &str) -> Option<Scorer> {
        Scorer::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Whether it asks yes/no questions, hence balanced accuracy, precision, recall and F1.
    pub fn yes_no(self) -> bool {
        matches!(self, Scorer::Detection | Scorer::Fuzz | Scorer::FuzzActive)
    }

    /// Whether it puts questions to the chat model, given the models at hand (simulation asks
    /// it only when the chat model cannot read prompts teacher-forced).
    pub fn asks_chat(self, models: &Models<'_>) -> bool {
        self.yes_no() || (self == Scorer::Simulation && models.chat_reader.is_none())
    }

    /// What it needs that `models` lack, if anything.
    fn missing(self, models: &Models<'_>) -> Option<&'static str> {
        match self {
            Scorer::Embedding if models.embedder.is_none() => {
                Some("the embedding scorer needs a sentence encoder")
            }
            Scorer::Surprisal if models.reader.is_none() => Some(
                "the surprisal scorer needs a model saescope runs itself to read the windows \
                 (a server gives no log-probabilities of a prompt)",
            ),
            Scorer::Intervention if models.steerer.is_none() || models.reader.is_none() => Some(
                "the intervention scorer needs the dictionary's model to push the latent and a \
                 model saescope runs itself to read the explanation",
            ),
            _ => None,
        }
    }

    /// Steps of work it takes for a latent's windows, for progress: prompts to the chat
    /// model, windows read, or prompts pushed on.
    fn steps(
        self,
        (active, silent): &(Vec<&ExampleRow>, Vec<&ExampleRow>),
        cfg: &ScoreConfig,
    ) -> usize {
        let all = active.len() + silent.len();
        match self {
            Scorer::FuzzActive => active.len().div_ceil(cfg.per_prompt.max(1)),
            Scorer::Detection | Scorer::Fuzz => all.div_ceil(cfg.per_prompt.max(1)),
            Scorer::Embedding | Scorer::Simulation | Scorer::Surprisal => all,
            Scorer::Intervention => cfg.intervention.prompts.max(1),
        }
    }

    fn question(self) -> Question {
        match self {
            Scorer::Fuzz => Question::Fuzz,
            Scorer::FuzzActive => Question::FuzzActive,
            // The windows as detection shows them: plain text, activating and silent.
            _ => Question::Detection,
        }
    }
}

/// Who scores: the chat model that answers questions, and what the other scorers need.
pub struct Models<'a> {
    /// Answers detection's and fuzzing's questions (and simulation's, when it cannot read).
    pub chat: &'a dyn Explainer,
    /// The chat model itself as a reader, when it runs here: simulation then reads its
    /// predictions off the prompt all at once instead of asking for them.
    pub chat_reader: Option<&'a dyn Reader>,
    /// Embeds explanations and windows (the embedding scorer).
    pub embedder: Option<&'a dyn Embedder>,
    /// Reads texts teacher-forced (surprisal, intervention, simulation all at once).
    pub reader: Option<&'a dyn Reader>,
    /// Pushes latents (intervention).
    pub steerer: Option<&'a dyn Steerer>,
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
    /// How the intervention scorer pushes.
    pub intervention: InterventionConfig,
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
            intervention: InterventionConfig::default(),
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
    /// How each scorer that can read its predictions more than one way read them.
    pub modes: BTreeSet<(String, &'static str)>,
    /// Why windows or whole scores failed, when a reason is known: (latent, scorer, reason).
    pub errors: Vec<(u32, String, String)>,
}

/// Where the tables go.
pub struct Tables<'a> {
    /// `scores.parquet`.
    pub scores: &'a Path,
    /// `score_windows.parquet`.
    pub windows: &'a Path,
}

/// Scores every job with every scorer against the latents' `tests` windows, asking `models`,
/// and keeps the tables up to date; `progress` gets (steps done, steps to do, windows failed
/// so far), a step being a prompt to the chat model, a window read, or a prompt pushed on.
#[allow(clippy::too_many_arguments)]
pub fn score(
    tests: &TestWindows<'_>,
    token_text: &dyn Fn(u32) -> String,
    jobs: &[Job],
    scorers: &[Scorer],
    models: &Models<'_>,
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
    if let Some(m) = scorers.iter().find_map(|s| s.missing(models)) {
        return Err(saescope_store::StoreError::InvalidInput(m.into()));
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
        .map(|&(j, s)| s.steps(&tests[&j.latent], cfg))
        .sum();
    let ctx = Context {
        token_text,
        models,
        cfg,
    };
    // What a latent's explanation and controls share (its windows embedded, read neutrally,
    // pushed) is made once; the jobs come latent by latent (as [`jobs`] makes them), so only
    // the current latent's is kept and memory stays one latent's whatever the run (jobs in
    // another order still score right, making it again).
    let mut shared = Shared::default();
    let mut done = 0;
    for chunk in todo.chunks(cfg.chunk.max(1)) {
        let mut plans = Vec::with_capacity(chunk.len());
        let mut requests = Vec::new();
        for &(job, s) in chunk {
            let (active, silent) = &tests[&job.latent];
            let seed = cfg.seed ^ (u64::from(job.latent) << 8) ^ s as u64;
            let samples = match s.yes_no() || s == Scorer::Embedding {
                true => classifier::samples(
                    s.question(),
                    active,
                    silent,
                    token_text,
                    cfg.mark_share,
                    seed,
                ),
                false => Vec::new(),
            };
            let first = requests.len();
            if s.yes_no() {
                for batch in samples.chunks(per) {
                    let refs: Vec<&Sample> = batch.iter().collect();
                    let m = classifier::messages(s.question(), &job.explanation, &refs);
                    requests.push(request(m, cfg, cfg.max_tokens));
                }
            } else if s.asks_chat(models) {
                for r in active.iter().chain(silent) {
                    let tokens = ctx.tokens(r);
                    let m = simulation::messages(&job.explanation, &tokens);
                    requests.push(request(m, cfg, 3 * tokens.len() + 8));
                }
            }
            plans.push((job, s, samples, first));
        }
        let (base, failed_so_far) = (done, report.failed);
        let answers = match requests.is_empty() {
            true => Vec::new(),
            false => models
                .chat
                .answer(&requests, &|n| progress(base + n, total, failed_so_far)),
        };
        done += requests.len();
        for (job, s, samples, first) in plans {
            let t = &tests[&job.latent];
            if shared.latent != Some(job.latent) {
                shared = Shared {
                    latent: Some(job.latent),
                    ..Shared::default()
                };
            }
            let answers = &answers[first.min(answers.len())..];
            let out = match s {
                Scorer::Detection | Scorer::Fuzz | Scorer::FuzzActive => {
                    let said = Said {
                        answers,
                        per,
                        prefill: cfg.prefill,
                    };
                    Outcome {
                        who: models.chat.name(),
                        settings: models.chat.settings(),
                        ..judge(job, s, &samples, &said)
                    }
                }
                Scorer::Embedding => ctx.rank(job, &samples, &mut shared),
                Scorer::Simulation => ctx.simulate(job, t, answers),
                Scorer::Surprisal => ctx.surprisal(job, t, &mut shared),
                Scorer::Intervention => ctx.intervene(job, t, &mut shared),
            };
            if !s.asks_chat(models) {
                done += s.steps(t, cfg);
            }
            let mut settings = serde_json::json!({
                "scorer": s.name(), "score": cfg, "model": out.settings,
            });
            if let Some(mode) = out.mode {
                settings["mode"] = mode.into();
                report.modes.insert((s.name().to_owned(), mode));
            }
            let mut row = metrics_row(job, s, &out.records, &out.who, &settings.to_string());
            row.value = out.value;
            row.bin_value = out.bin_value;
            report
                .errors
                .extend(out.error.map(|e| (job.latent, s.name().to_owned(), e)));
            report.scored += 1;
            report.windows += out.records.len();
            report.failed += row.failed as usize;
            report.with_probabilities += usize::from(row.auc.is_some());
            windows.insert(row.key(), out.records);
            scores.insert(row.key(), row);
            progress(done, total, report.failed);
        }
        let all_windows: Vec<WindowScore> = windows.values().flatten().cloned().collect();
        write_window_scores(tables.windows, &all_windows)?;
        let all: Vec<ScoreRow> = scores.values().cloned().collect();
        write_scores(tables.scores, &all)?;
        progress(done, total, report.failed);
    }
    Ok(report)
}

/// What a latent's explanation and its controls share, made for the first of them.
#[derive(Default)]
struct Shared<'t> {
    pub(super) latent: Option<u32>,
    /// The windows' unit vectors (embedding).
    pub(super) embedded: Option<Result<Vec<Vec<f32>>, String>>,
    /// The windows read after the neutral description (surprisal).
    pub(super) neutral: Option<Vec<Result<Read, String>>>,
    /// The pushes and continuations (intervention).
    pub(super) steered: Option<Result<Steered<'t>, String>>,
}

fn request(mut messages: Vec<Message>, cfg: &ScoreConfig, max_tokens: usize) -> ChatRequest {
    if cfg.prefill {
        messages.push(Message::new("assistant", "["));
    }
    ChatRequest {
        messages,
        max_tokens,
        temperature: 0.0,
        seed: None,
        top_logprobs: (cfg.top_logprobs > 0).then_some(cfg.top_logprobs),
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
