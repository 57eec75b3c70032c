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
pub mod intervention;
pub mod simulation;
pub mod surprisal;

pub use saescope_stats::summary;

use crate::explain::Explainer;
use crate::metrics::{Confusion, auc};
use crate::read::{Read, Reader};
use crate::wire::Message;
use crate::{ChatReply, ChatRequest};
use classifier::{Question, Sample};
use embedding::{Embedder, cosine};
use intervention::{InterventionConfig, Steered, Steerer};
use saescope_store::examples::{ExampleKind, ExampleRow, ExampleSet};
use saescope_store::explanations::Evidence;
use saescope_store::scores::{
    Control, ScoreKey, ScoreRow, WindowScore, read_scores, read_window_scores, write_scores,
    write_window_scores,
};
use serde::{Deserialize, Serialize};
use simulation::Mode;
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
                settings["mode"] = mode.name().into();
                report.modes.insert((s.name().to_owned(), mode.name()));
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

/// What one job scored: its window records, its own measure for the scorers with one, who
/// scored, and how.
#[derive(Default)]
struct Outcome {
    records: Vec<WindowScore>,
    value: Option<f64>,
    bin_value: Vec<f32>,
    /// Who scored, for the `model` column.
    who: String,
    /// Their settings, for the record.
    settings: serde_json::Value,
    mode: Option<Mode>,
    /// Why some or all windows failed, when known.
    error: Option<String>,
}

/// What a latent's explanation and its controls share, made for the first of them.
#[derive(Default)]
struct Shared<'t> {
    latent: Option<u32>,
    /// The windows' unit vectors (embedding).
    embedded: Option<Result<Vec<Vec<f32>>, String>>,
    /// The windows read after the neutral description (surprisal).
    neutral: Option<Vec<Result<Read, String>>>,
    /// The pushes and continuations (intervention).
    steered: Option<Result<Steered<'t>, String>>,
}

/// What every job is scored with.
struct Context<'a> {
    token_text: &'a dyn Fn(u32) -> String,
    models: &'a Models<'a>,
    cfg: &'a ScoreConfig,
}

impl<'a> Context<'a> {
    fn tokens(&self, r: &ExampleRow) -> Vec<String> {
        r.token_ids.iter().map(|&t| (self.token_text)(t)).collect()
    }

    fn text(&self, r: &ExampleRow) -> String {
        self.tokens(r).concat()
    }

    fn reader(&self) -> &'a dyn Reader {
        self.models.reader.expect("checked before scoring")
    }

    /// The embedding scorer: each window's cosine with the explanation, as its score (none,
    /// a failure, when either could not be embedded).
    fn rank(&self, job: &Job, samples: &[Sample], shared: &mut Shared<'_>) -> Outcome {
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

    /// The simulation scorer: every test window's tokens predicted, read all at once by the
    /// reader when there is one, else from the chat model's `answers` (one per window).
    fn simulate(
        &self,
        job: &Job,
        (active, silent): &(Vec<&ExampleRow>, Vec<&ExampleRow>),
        answers: &[Result<ChatReply, String>],
    ) -> Outcome {
        let rows: Vec<&ExampleRow> = active.iter().chain(silent).copied().collect();
        let tokens: Vec<Vec<String>> = rows.iter().map(|r| self.tokens(r)).collect();
        let mut error = None;
        let (predictions, mode, who, settings): (Vec<Option<Vec<f32>>>, _, _, _) =
            match self.models.chat_reader {
                Some(reader) => {
                    let readings: Vec<_> = tokens
                        .iter()
                        .map(|t| simulation::reading(&job.explanation, t))
                        .collect();
                    let read = reader.read(&readings, &simulation::DIGITS);
                    let p = read
                        .into_iter()
                        .map(|r| match r {
                            Ok(r) => Some(simulation::from_read(&r)),
                            Err(e) => {
                                error.get_or_insert(e);
                                None
                            }
                        })
                        .collect();
                    let name = reader.reader_name();
                    (p, Some(Mode::PromptLogprobs), name.clone(), name.into())
                }
                None => {
                    let mut weakest: Option<Mode> = None;
                    let p = tokens
                        .iter()
                        .zip(answers)
                        .map(|(t, a)| match a {
                            Ok(reply) => {
                                let (p, m) =
                                    simulation::from_answer(reply, t.len(), self.cfg.prefill)?;
                                weakest = weakest.max(Some(m));
                                Some(p)
                            }
                            Err(e) => {
                                error.get_or_insert(e.clone());
                                None
                            }
                        })
                        .collect();
                    let chat = self.models.chat;
                    (p, weakest, chat.name(), chat.settings())
                }
            };
        let records: Vec<WindowScore> = rows
            .iter()
            .zip(predictions)
            .map(|(r, p)| {
                let top = p
                    .as_ref()
                    .map(|p| p.iter().copied().fold(0.0, f32::max) / 9.0);
                record(
                    job,
                    Scorer::Simulation,
                    meta(r),
                    None,
                    top,
                    p.unwrap_or_default(),
                )
            })
            .collect();
        let pairs = |keep: &dyn Fn(&WindowScore) -> bool| {
            let windows = rows.iter().zip(&records).filter(|(_, w)| keep(w));
            simulation::correlation(
                windows
                    .filter(|(_, w)| !w.values.is_empty())
                    .map(|(r, w)| (r.acts.as_slice(), w.values.as_slice())),
            )
        };
        let value = pairs(&|_| true);
        let bin_value = by_bin(&records, |b| pairs(&|w| !w.truth || w.bin == b));
        Outcome {
            records,
            value,
            bin_value,
            who,
            settings,
            mode,
            error,
        }
    }

    /// The surprisal scorer: each window's loss drop with the explanation before it against
    /// the neutral description.
    fn surprisal(
        &self,
        job: &Job,
        (active, silent): &(Vec<&ExampleRow>, Vec<&ExampleRow>),
        shared: &mut Shared<'_>,
    ) -> Outcome {
        let reader = self.reader();
        let rows: Vec<&ExampleRow> = active.iter().chain(silent).copied().collect();
        let texts: Vec<String> = rows.iter().map(|r| self.text(r)).collect();
        let read = |description: &str| {
            let readings: Vec<_> = texts
                .iter()
                .map(|t| surprisal::reading(description, t))
                .collect();
            reader.read(&readings, &[])
        };
        let neutral = shared
            .neutral
            .get_or_insert_with(|| read(surprisal::NEUTRAL));
        let mut error = None;
        let records: Vec<WindowScore> = rows
            .iter()
            .zip(read(&job.explanation).iter().zip(neutral.iter()))
            .map(|(r, pair)| {
                let drops = match pair {
                    (Ok(e), Ok(n)) => surprisal::drops(e, n),
                    (Err(e), _) | (_, Err(e)) => {
                        error.get_or_insert(e.clone());
                        None
                    }
                };
                let mean = drops
                    .as_ref()
                    .and_then(|d| surprisal::mean(d.iter().map(|&x| f64::from(x))));
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
            surprisal::mean(
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

    /// The intervention scorer: the explanation's log-probability per token after each pushed
    /// continuation less after the clean one.
    fn intervene<'t>(
        &self,
        job: &Job,
        (active, silent): &(Vec<&'t ExampleRow>, Vec<&'t ExampleRow>),
        shared: &mut Shared<'t>,
    ) -> Outcome {
        let reader = self.reader();
        let steerer = self.models.steerer.expect("checked before scoring");
        // The reader answers (as a chat model does for the other scorers); the push is in the
        // settings.
        let who = reader.reader_name();
        let steered = shared.steered.get_or_insert_with(|| {
            steerer.steer(job.latent, active, silent, &self.cfg.intervention)
        });
        let steered = match steered {
            Ok(s) => s,
            Err(e) => {
                return Outcome {
                    who: who.clone(),
                    settings: serde_json::json!({ "reader": who, "steerer": steerer.steerer_name() }),
                    error: Some(e.clone()),
                    ..Outcome::default()
                };
            }
        };
        let readings: Vec<_> = steered
            .passages
            .iter()
            .flat_map(|p| {
                let t = &p.text;
                [&t.clean, &t.pushed].map(|c| intervention::reading(&t.prompt, c, &job.explanation))
            })
            .collect();
        let read = reader.read(&readings, &[]);
        let mut error = None;
        let records: Vec<WindowScore> = steered
            .passages
            .iter()
            .zip(read.chunks(2))
            .map(|(p, pair)| {
                let mut lp = |r: &Result<Read, String>| match r {
                    Ok(r) => intervention::per_token(r),
                    Err(e) => {
                        error.get_or_insert(e.clone());
                        None
                    }
                };
                let (clean, pushed) = (lp(&pair[0]), lp(&pair[1]));
                let (rise, values) = match (clean, pushed) {
                    (Some(c), Some(p)) => (Some(p - c), vec![c, p]),
                    _ => (None, Vec::new()),
                };
                let (start, kind, bin, _) = meta(p.window);
                record(
                    job,
                    Scorer::Intervention,
                    (start, kind, bin, true),
                    None,
                    rise,
                    values,
                )
            })
            .collect();
        let value = surprisal::mean(records.iter().filter_map(|w| w.probability.map(f64::from)));
        Outcome {
            records,
            value,
            who,
            settings: serde_json::json!({
                "strength": steered.strength, "kl": steered.kl,
                "reader": reader.reader_name(), "steerer": steerer.steerer_name(),
            }),
            error,
            ..Outcome::default()
        }
    }
}

/// `f` of each activation bin present in `records` (0 the strongest), NaN where it has none.
fn by_bin(records: &[WindowScore], f: impl Fn(i16) -> Option<f64>) -> Vec<f32> {
    let bins = records.iter().map(|w| w.bin + 1).max().unwrap_or(0).max(0);
    (0..bins)
        .map(|b| f(b).map_or(f32::NAN, |v| v as f32))
        .collect()
}

/// A test window's key and kind, as its records carry them: (start, kind, bin, activating).
type Meta = (u64, ExampleKind, i16, bool);

fn meta(r: &ExampleRow) -> Meta {
    (r.start, r.kind, r.bin, r.kind == ExampleKind::Activating)
}

impl Sample {
    fn meta(&self) -> Meta {
        (self.start, self.kind, self.bin, self.truth)
    }
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

/// The answers to one job's prompts.
struct Said<'a> {
    /// From the job's first prompt on.
    answers: &'a [Result<ChatReply, String>],
    /// Windows a prompt.
    per: usize,
    /// Whether the answers were begun with `[` for the model (a server then leaves it out).
    prefill: bool,
}

/// The window records of one job's answers to yes/no questions.
fn judge(job: &Job, scorer: Scorer, samples: &[Sample], said: &Said<'_>) -> Outcome {
    let mut records = Vec::with_capacity(samples.len());
    let mut error = None;
    for (batch, answer) in samples.chunks(said.per).zip(said.answers) {
        if let Err(e) = answer {
            error.get_or_insert(e.clone());
        }
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
fn record(
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
