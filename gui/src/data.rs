//! What the explorer shows, read from a run directory: the run's manifest, its dictionaries with
//! their metrics and training curves, each dictionary's feature store, and the run's
//! circuit-discovery results. Everything here only
//! reads, and nothing fails as a whole: what cannot be read becomes a [`Problem`] that says what
//! is missing and which command makes it.

use crate::error::{ExploreError, panic_text};
use saescope_stats::summary::{SummaryLine, summarize};
use saescope_store::DictDir;
use saescope_store::circuits::{self, CircuitDir, CircuitSummary, EdgeRow, HeadRow, PromptRow};
use saescope_store::dictionary::LogLine;
use saescope_store::explanations::Evidence;
use saescope_store::features::{
    CONTEXTS_FILE, ContextRow, ContextsFile, FeatureRow, NeighbourRow, Summary, read_features,
    read_neighbours, read_summary,
};
use saescope_store::manifest::{MANIFEST_FILE, Manifest};
use saescope_store::scores::{Control, ScoreRow};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

/// Something the explorer could not read, and how to make it.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// What is missing or unreadable.
    pub what: String,
    /// The command that produces what is missing, when one does.
    pub fix: Option<String>,
}

impl Problem {
    fn new(what: impl Into<String>, fix: Option<String>) -> Self {
        Problem {
            what: what.into(),
            fix,
        }
    }
}

/// A dictionary in the run, with what its directory says about it.
#[derive(Clone, Debug)]
pub struct DictEntry {
    /// Its directory's name.
    pub name: String,
    /// Its directory.
    pub dir: DictDir,
    /// The architecture `cfg.json` names.
    pub method: String,
    /// The hook it reads.
    pub hook: Option<String>,
    /// Latents.
    pub latents: Option<u64>,
    /// Values read per token.
    pub d_in: Option<u64>,
    /// Held-out FVU from `metrics.json`.
    pub fvu: Option<f64>,
    /// Held-out L0 from `metrics.json`.
    pub l0: Option<f64>,
    /// Held-out dead fraction from `metrics.json`.
    pub dead_fraction: Option<f64>,
    /// From `eval.json`.
    pub ce_loss_recovered: Option<f64>,
    /// The training log.
    pub curve: Vec<LogLine>,
    /// What could not be read, and how to make it.
    pub problems: Vec<Problem>,
}

impl DictEntry {
    /// Where its feature store lives.
    pub fn features_dir(&self) -> PathBuf {
        self.dir.features()
    }

    /// The layer and heads of an attention-output (`attn.hook_z`) dictionary.
    pub fn attention_layer(&self) -> Option<usize> {
        let hook = self.hook.as_deref()?;
        let rest = hook.strip_prefix("blocks.")?;
        let (layer, kind) = rest.split_once('.')?;
        (kind == "attn.hook_z").then(|| layer.parse().ok())?
    }

    fn read(dir: DictDir) -> DictEntry {
        let mut problems = Vec::new();
        let mut note = |e: saescope_store::StoreError| {
            problems.push(Problem::new(e.to_string(), None));
        };
        let cfg = dir.read_config().map_err(&mut note).unwrap_or_default();
        let metrics = dir.read_metrics().map_err(&mut note).ok().flatten();
        let eval = dir.read_eval().map_err(&mut note).ok().flatten();
        let (curve, bad) = dir
            .read_training_log()
            .map_err(&mut note)
            .unwrap_or_default();
        if eval.is_none() && !dir.eval().exists() {
            problems.push(Problem::new(
                format!("{} is missing", dir.eval().display()),
                Some(format!("saescope eval --dict {}", dir.path().display())),
            ));
        }
        if bad > 0 {
            problems.push(Problem::new(
                format!(
                    "{}: {bad} lines could not be read",
                    dir.training_log().display()
                ),
                None,
            ));
        }
        DictEntry {
            name: dir.name(),
            method: cfg.architecture().unwrap_or("unknown").to_owned(),
            hook: cfg.hook().map(str::to_owned),
            latents: cfg.latents(),
            d_in: cfg.d_in,
            fvu: metrics.as_ref().map(|m| m.fvu),
            l0: metrics.as_ref().map(|m| m.l0),
            dead_fraction: metrics.as_ref().map(|m| m.dead_fraction),
            ce_loss_recovered: eval.as_ref().map(|e| e.ce_loss_recovered),
            curve,
            problems,
            dir,
        }
    }
}

/// A run directory as the explorer sees it.
#[derive(Clone, Debug)]
pub struct RunData {
    /// The directory opened.
    pub dir: PathBuf,
    /// The run's manifest, when it has one.
    pub manifest: Option<Manifest>,
    /// Its dictionaries, by name.
    pub dictionaries: Vec<DictEntry>,
    /// Its circuit-discovery results (`RUN/circuits/TASK`), by task.
    pub circuits: Vec<CircuitData>,
    /// What could not be read.
    pub problems: Vec<Problem>,
}

impl RunData {
    /// Reads a run directory, or a single dictionary's directory (one with `cfg.json`).
    pub fn open(dir: &Path) -> RunData {
        let mut problems = Vec::new();
        let mut dictionaries = Vec::new();
        if !dir.is_dir() {
            problems.push(Problem::new(
                format!("{} is not a directory", dir.display()),
                Some("saescope demo".into()),
            ));
            return RunData {
                dir: dir.to_owned(),
                manifest: None,
                dictionaries,
                circuits: Vec::new(),
                problems,
            };
        }
        if DictDir::new(dir).exists() {
            dictionaries.push(DictEntry::read(DictDir::new(dir)));
            return RunData {
                dir: dir.to_owned(),
                manifest: None,
                dictionaries,
                circuits: Vec::new(),
                problems,
            };
        }
        let manifest = if dir.join(MANIFEST_FILE).exists() {
            match Manifest::load(dir) {
                Ok(m) => {
                    if !m.complete {
                        problems.push(Problem::new(
                            format!(
                                "the harvest is not finished ({} tokens so far): it is still being written, or was interrupted",
                                m.total_tokens
                            ),
                            Some(format!(
                                "saescope harvest --out {} --resume",
                                dir.display()
                            )),
                        ));
                    }
                    Some(m)
                }
                Err(e) => {
                    problems.push(Problem::new(e.to_string(), None));
                    None
                }
            }
        } else {
            problems.push(Problem::new(
                format!(
                    "{}: no {MANIFEST_FILE}, so this is not a harvest run",
                    dir.display()
                ),
                Some(format!("saescope harvest --out {}", dir.display())),
            ));
            None
        };
        dictionaries.extend(DictDir::list(dir).into_iter().map(DictEntry::read));
        if dictionaries.is_empty() && manifest.is_some() {
            problems.push(Problem::new(
                "no dictionary has been trained on this run",
                Some(format!("saescope train --run {}", dir.display())),
            ));
        }
        let mut circuits = Vec::new();
        for c in CircuitDir::of_run(dir) {
            match CircuitData::read(&c) {
                Ok(data) => circuits.push(data),
                Err(e) => problems.push(Problem::new(
                    e.to_string(),
                    Some(format!(
                        "saescope circuits --run {} --task TASK",
                        dir.display()
                    )),
                )),
            }
        }
        RunData {
            dir: dir.to_owned(),
            manifest,
            dictionaries,
            circuits,
            problems,
        }
    }
}

/// One task's circuit-discovery results: the summary and the heads, pairs and prompts tables
/// (the per-prompt codes stay on disk).
#[derive(Clone, Debug)]
pub struct CircuitData {
    /// The task's directory.
    pub dir: PathBuf,
    /// `summary.json`.
    pub summary: CircuitSummary,
    /// One row per head.
    pub heads: Vec<HeadRow>,
    /// The best pairs, best first.
    pub edges: Vec<EdgeRow>,
    /// The task's prompts with the model's answers.
    pub prompts: Vec<PromptRow>,
}

impl CircuitData {
    /// Reads a task's results.
    pub fn read(dir: &CircuitDir) -> Result<CircuitData, saescope_store::StoreError> {
        Ok(CircuitData {
            dir: dir.path().to_owned(),
            summary: circuits::read_summary(dir)?,
            heads: circuits::read_heads(dir)?,
            edges: circuits::read_edges(dir)?,
            prompts: circuits::read_prompts(dir)?,
        })
    }

    /// The layers whose heads were scored.
    pub fn layers(&self) -> Vec<u32> {
        match &self.summary.scored_layers {
            Some(layers) => layers.iter().map(|&l| l as u32).collect(),
            None => (0..self.summary.layers as u32).collect(),
        }
    }

    /// The head at (layer, head).
    pub fn head(&self, layer: u32, head: u32) -> Option<&HeadRow> {
        self.heads
            .iter()
            .find(|h| h.layer == layer && h.head == head)
    }
}

/// A dictionary's feature store, read for browsing: summary, features and neighbours in
/// memory; contexts read one feature at a time from the Parquet file. Cloned (contexts index
/// shared) when its explanations are read again after an explain job.
#[derive(Clone)]
pub struct FeatureTable {
    /// The feature store's directory.
    pub dir: PathBuf,
    /// Its summary.
    pub summary: Summary,
    /// Every feature's row, indexed by feature.
    pub features: Vec<FeatureRow>,
    neighbours: Vec<NeighbourRow>,
    /// neighbours[nb_start[f]..nb_start[f + 1]] are feature f's.
    nb_start: Vec<usize>,
    contexts: Result<Arc<ContextsFile>, ExploreError>,
    /// Lower-cased text a search matches per feature: its top logit tokens and explanation.
    search: Vec<String>,
    /// Each feature's explanation, from the dictionary's `explanations.parquet` beside the
    /// store (empty when there is none).
    explanations: Vec<Option<String>>,
    /// Each feature's output-side explanation (what it makes the model say when pushed).
    effects: Vec<Option<String>>,
    /// Why the explanations could not be read, when they could not.
    pub explanations_error: Option<String>,
    /// Each scored feature's scores (`scores.parquet` beside the store), by scorer then control.
    scores: HashMap<u32, Vec<ScoreRow>>,
    /// Why the scores could not be read, when they could not.
    pub scores_error: Option<String>,
    /// The run's score summary per kind of explanation (activations, then effects): per
    /// scorer and control, means over features with bootstrap intervals.
    pub score_summary: Vec<(Evidence, Vec<SummaryLine>)>,
}

impl FeatureTable {
    /// Reads the store in `dir`, checking `cancel` between tables.
    pub fn open(
        dir: &Path,
        stage: &dyn Fn(&str),
        cancel: &AtomicBool,
    ) -> Result<FeatureTable, ExploreError> {
        let cancelled = || cancel.load(Ordering::Relaxed);
        stage("summary");
        let summary = read_summary(dir)?;
        stage("features");
        let mut features = read_features(dir)?;
        if cancelled() {
            return Err(ExploreError::Cancelled);
        }
        // Rows are by feature number; make sure of it so a feature's row is features[f].
        if features
            .iter()
            .enumerate()
            .any(|(i, r)| r.feature as usize != i)
        {
            features.sort_by_key(|r| r.feature);
            if features
                .iter()
                .enumerate()
                .any(|(i, r)| r.feature as usize != i)
            {
                return Err(ExploreError::Read(format!(
                    "{}: the features table does not hold features 0..{} once each",
                    dir.join(saescope_store::features::FEATURES_FILE).display(),
                    features.len()
                )));
            }
        }
        stage("neighbours");
        let mut neighbours = read_neighbours(dir)?;
        neighbours.retain(|n| (n.feature as usize) < features.len());
        neighbours.sort_by_key(|n| (n.feature, n.rank));
        let mut nb_start = vec![0usize; features.len() + 1];
        for n in &neighbours {
            nb_start[n.feature as usize + 1] += 1;
        }
        for i in 0..features.len() {
            nb_start[i + 1] += nb_start[i];
        }
        if cancelled() {
            return Err(ExploreError::Cancelled);
        }
        stage("contexts index");
        let contexts = undamaged(dir, || ContextsFile::open(dir)).map(Arc::new);
        stage("explanations");
        Ok(FeatureTable {
            dir: dir.to_owned(),
            summary,
            features,
            neighbours,
            nb_start,
            contexts,
            search: Vec::new(),
            explanations: Vec::new(),
            effects: Vec::new(),
            explanations_error: None,
            scores: HashMap::new(),
            scores_error: None,
            score_summary: Vec::new(),
        }
        .with_explanations())
    }

    /// This table with the explanations (and the search text) read again from the
    /// dictionary's `explanations.parquet` beside the store, and their scores from
    /// `scores.parquet`.
    pub fn with_explanations(mut self) -> FeatureTable {
        self.scores.clear();
        self.scores_error = None;
        if let Some(dict) = self.dir.parent() {
            let table = dict.join(saescope_store::scores::SCORES_FILE);
            match undamaged(&self.dir, || saescope_store::scores::read_scores(&table)) {
                Ok(rows) => {
                    for r in rows {
                        self.scores.entry(r.latent).or_default().push(r);
                    }
                }
                Err(e) => self.scores_error = Some(e.to_string()),
            }
        }
        self.score_summary = self.summarize_scores();
        let mut explanations = vec![None; self.features.len()];
        let mut effects = vec![None; self.features.len()];
        self.explanations_error = None;
        if let Some(dict) = self.dir.parent() {
            let table = dict.join(saescope_store::explanations::EXPLANATIONS_FILE);
            match undamaged(&self.dir, || {
                saescope_store::explanations::read_explanations(&table)
            }) {
                Ok(rows) => {
                    for r in rows {
                        let column = match r.evidence {
                            Evidence::Activations => &mut explanations,
                            Evidence::Effects => &mut effects,
                        };
                        if let Some(slot) = column.get_mut(r.latent as usize) {
                            *slot = r.explanation;
                        }
                    }
                }
                Err(e) => self.explanations_error = Some(e.to_string()),
            }
        }
        self.search = self
            .features
            .iter()
            .zip(explanations.iter().zip(&effects))
            .map(|(r, (e, o))| {
                let mut text = r.logit_top_tokens.join("\u{1}");
                for e in [e, o].into_iter().flatten() {
                    text.push('\u{1}');
                    text.push_str(e);
                }
                text.to_lowercase()
            })
            .collect();
        self.explanations = explanations;
        self.effects = effects;
        self
    }

    /// Feature `f`'s explanation from where it fires, when it has one.
    pub fn explanation(&self, f: u32) -> Option<&str> {
        self.explanations.get(f as usize)?.as_deref()
    }

    /// The score summary the command line prints, weighted by the features' firing density.
    fn summarize_scores(&self) -> Vec<(Evidence, Vec<SummaryLine>)> {
        let rows: Vec<ScoreRow> = self.scores.values().flatten().cloned().collect();
        let density: HashMap<u32, f64> = self
            .features
            .iter()
            .map(|r| (r.feature, r.density))
            .collect();
        [Evidence::Activations, Evidence::Effects]
            .into_iter()
            .map(|e| (e, summarize(&rows, e, Some(&density), 0)))
            .filter(|(_, lines)| !lines.is_empty())
            .collect()
    }

    /// Feature `f`'s scores, by scorer then control (empty when it has none).
    pub fn scores(&self, f: u32) -> &[ScoreRow] {
        self.scores.get(&f).map_or(&[], Vec::as_slice)
    }

    /// Feature `f`'s score for sorting and filtering: over the scorers that scored its own
    /// explanation (from activations), the mean of each one's AUC, or its balanced accuracy where
    /// it has no AUC; `None` when unscored.
    pub fn score(&self, f: u32) -> Option<f64> {
        let values: Vec<f64> = self
            .scores(f)
            .iter()
            .filter(|r| r.control == Control::Real && r.evidence == Evidence::Activations)
            .filter_map(|r| r.auc.or(r.balanced_accuracy))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    }

    /// Feature `f`'s output-side explanation (what it makes the model say), when it has one.
    pub fn effect_explanation(&self, f: u32) -> Option<&str> {
        self.effects.get(f as usize)?.as_deref()
    }

    /// Features in the store.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// Whether the store holds no feature.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Feature `f`'s row.
    pub fn feature(&self, f: u32) -> Option<&FeatureRow> {
        self.features.get(f as usize)
    }

    /// Feature `f`'s decoder neighbours, nearest first.
    pub fn neighbours(&self, f: u32) -> &[NeighbourRow] {
        let f = f as usize;
        if f + 1 >= self.nb_start.len() {
            return &[];
        }
        &self.neighbours[self.nb_start[f]..self.nb_start[f + 1]]
    }

    /// Feature `f`'s top contexts and interval samples.
    pub fn contexts(&self, f: u32) -> Result<Vec<ContextRow>, ExploreError> {
        let file = self.contexts.as_ref().map_err(Clone::clone)?;
        // Read on the window's thread, where a decoder panic would close the window.
        undamaged(&self.dir, || file.of(f))
    }

    /// Whether the lower-cased `needle` appears among feature `f`'s top logit tokens or in its
    /// explanation.
    pub fn matches(&self, f: u32, needle: &str) -> bool {
        self.search
            .get(f as usize)
            .is_some_and(|s| s.contains(needle))
    }
}

/// Reads from the contexts table in `dir`, turning a panic of the Parquet decoder (it has some
/// on damaged bytes, such as a footer whose offsets point nowhere) into an error naming the
/// file: a damaged table costs its contexts, not the feature list or the window.
fn undamaged<T>(
    dir: &Path,
    read: impl FnOnce() -> saescope_store::Result<T>,
) -> Result<T, ExploreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(r) => Ok(r?),
        Err(payload) => Err(ExploreError::Read(format!(
            "{}: cannot read as Parquet: damaged data ({})",
            dir.join(CONTEXTS_FILE).display(),
            panic_text(&*payload).unwrap_or("the decoder panicked")
        ))),
    }
}

/// Work on a background thread that reports its stage and can be cancelled; the UI polls it
/// each frame.
pub struct Loading<T> {
    /// What is loading, for the screen.
    pub what: String,
    stage: Arc<Mutex<String>>,
    cancel: Arc<AtomicBool>,
    rx: Receiver<Result<T, ExploreError>>,
    started: std::time::Instant,
}

impl<T: Send + 'static> Loading<T> {
    /// Starts `work` on its own thread; it reports stages through its first argument and
    /// checks the second for cancellation. `ctx` is repainted when it ends.
    pub fn start(
        what: impl Into<String>,
        ctx: Option<eframe::egui::Context>,
        work: impl FnOnce(&dyn Fn(&str), &AtomicBool) -> Result<T, ExploreError> + Send + 'static,
    ) -> Self {
        let stage = Arc::new(Mutex::new(String::new()));
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (st, cn) = (stage.clone(), cancel.clone());
        std::thread::Builder::new()
            .name("saescope-explore-load".into())
            .spawn(move || {
                let set = |s: &str| {
                    if let Ok(mut g) = st.lock() {
                        *g = s.to_owned();
                    }
                };
                let out =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&set, &cn)))
                        .unwrap_or_else(|_| {
                            Err(ExploreError::Worker(
                                "the loader failed unexpectedly".into(),
                            ))
                        });
                let _ = tx.send(out);
                if let Some(ctx) = ctx {
                    ctx.request_repaint();
                }
            })
            .expect("spawning a thread");
        Loading {
            what: what.into(),
            stage,
            cancel,
            rx,
            started: std::time::Instant::now(),
        }
    }

    /// The result once there is one.
    pub fn poll(&self) -> Option<Result<T, ExploreError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                Some(Err(ExploreError::Worker("the loader stopped".into())))
            }
        }
    }

    /// Waits for the result (tests and benchmarks).
    pub fn wait(&self) -> Result<T, ExploreError> {
        self.rx
            .recv()
            .unwrap_or_else(|_| Err(ExploreError::Worker("the loader stopped".into())))
    }

    /// The stage the work last reported.
    pub fn stage(&self) -> String {
        self.stage.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Seconds since it started.
    pub fn seconds(&self) -> f32 {
        self.started.elapsed().as_secs_f32()
    }

    /// Asks the work to stop at its next check.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
