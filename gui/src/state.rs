//! The explorer's state: plain data (what is open, what is selected, the history of feature
//! pages) and what changes it (opening a run or dictionary, navigating, answers arriving). The
//! views in [`crate::views`] draw it and record what the user asked for; data comes only from
//! [`crate::data`] and answers from [`crate::engine`].

use crate::data::{DictEntry, FeatureTable, Loading, Problem, RunData};
use crate::engine::{Answer, EngineFactory, Request, Steered, Worker};
use crate::error::ExploreError;
use crate::explainer::{ExplainJob, Explained, FeatureExplainer};
use eframe::egui;
use saescope_store::features::ContextRow;
use saescope_store::prompt::{Attribution, PromptView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What is remembered between launches.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    /// The run open last.
    pub run: Option<PathBuf>,
    /// Its dictionary selected last.
    pub dictionary: Option<String>,
    /// The feature whose page was open last.
    pub feature: Option<u32>,
}

/// The explorer's views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The run, its dictionaries and their training curves.
    Overview,
    /// The feature list.
    Features,
    /// One feature's page.
    Feature,
    /// A prompt through the model and dictionary.
    Prompt,
    /// Attention-output features by head.
    Heads,
    /// The heads a task needs, by code overlap beside ablation.
    Circuits,
}

impl View {
    /// Every view with its tab's name.
    pub const ALL: [(View, &'static str); 6] = [
        (View::Overview, "Overview"),
        (View::Features, "Features"),
        (View::Feature, "Feature"),
        (View::Prompt, "Prompt"),
        (View::Heads, "Heads"),
        (View::Circuits, "Circuits"),
    ];
}

/// The feature list's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// By feature number.
    Feature,
    /// By firing density.
    Density,
    /// By largest activation.
    MaxAct,
    /// By strongest promoted logit.
    TopLogit,
    /// By the score of its explanation ([`FeatureTable::score`]); unscored features last.
    Score,
}

/// The feature list's filters and the order they produce.
pub struct ListState {
    /// The search box: a top logit token or a feature number.
    pub search: String,
    /// log10 density bounds (inclusive low, exclusive high).
    pub density: Option<(f64, f64)>,
    /// Keep only features whose explanation scores at least this.
    pub min_score: Option<f64>,
    /// The order.
    pub sort: SortBy,
    /// Largest first.
    pub descending: bool,
    /// Features passing the filters, in display order.
    pub rows: Vec<u32>,
    /// Selected row (keyboard navigation).
    pub cursor: usize,
    pub(crate) dirty: bool,
}

impl Default for ListState {
    fn default() -> Self {
        ListState {
            search: String::new(),
            density: None,
            min_score: None,
            sort: SortBy::Density,
            descending: true,
            rows: Vec::new(),
            cursor: 0,
            dirty: true,
        }
    }
}

impl ListState {
    /// Recomputes the rows from the filters and order.
    pub(crate) fn refresh(&mut self, table: &FeatureTable) {
        let needle = self.search.trim().to_lowercase();
        let number: Option<u32> = needle.parse().ok();
        let mut rows: Vec<u32> = (0..table.len() as u32)
            .filter(|&f| {
                let r = &table.features[f as usize];
                let in_density = self.density.is_none_or(|(lo, hi)| {
                    let x = (r.density + 1e-10).log10();
                    x >= lo && x < hi
                });
                let scored = self
                    .min_score
                    .is_none_or(|min| table.score(f).is_some_and(|s| s >= min));
                in_density
                    && scored
                    && (needle.is_empty() || number == Some(f) || table.matches(f, &needle))
            })
            .collect();
        let key = |f: &u32| -> f64 {
            let r = &table.features[*f as usize];
            match self.sort {
                SortBy::Feature => *f as f64,
                SortBy::Density => r.density,
                SortBy::MaxAct => r.max_act as f64,
                SortBy::TopLogit => r.logit_top_values.first().copied().unwrap_or(0.0) as f64,
                // Unscored features go last whichever way the list runs.
                SortBy::Score => table.score(*f).unwrap_or(if self.descending {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                }),
            }
        };
        rows.sort_by(|a, b| {
            let o = key(a).total_cmp(&key(b)).then(a.cmp(b));
            if self.descending { o.reverse() } else { o }
        });
        self.rows = rows;
        self.cursor = self.cursor.min(self.rows.len().saturating_sub(1));
        self.dirty = false;
    }
}

/// A feature page's data, read when the page opens.
pub struct Page {
    /// The feature.
    pub feature: u32,
    /// Its contexts, read from the store.
    pub contexts: Result<Vec<ContextRow>, ExploreError>,
    /// How long reading them took.
    pub seconds: f64,
}

/// The prompt view's text and answers.
#[derive(Default)]
pub struct PromptState {
    /// The text in the box.
    pub text: String,
    /// The text the shown result belongs to.
    pub ran: String,
    /// The engine's answer.
    pub result: Option<Result<PromptView, ExploreError>>,
    /// Shade the prompt by this feature.
    pub shade: Option<u32>,
    /// The destination token chosen for attribution.
    pub dest: Option<usize>,
    /// The attribution's answer.
    pub attribution: Option<Result<Attribution, ExploreError>>,
    /// The value the shaded feature is clamped to.
    pub clamp_value: f32,
    /// The prompt's continuations with the shaded feature clamped, and without.
    pub clamped: Option<Result<Steered, ExploreError>>,
}

/// The feature page's steering panel.
pub struct SteerState {
    /// The prompt in the box.
    pub text: String,
    /// Clamp (rather than add).
    pub clamp: bool,
    /// The slider: the add strength in largest activations, or the clamp value.
    pub strength: f32,
    /// New tokens per continuation.
    pub max_new_tokens: usize,
    /// The engine's answer.
    pub result: Option<Result<Steered, ExploreError>>,
}

impl Default for SteerState {
    fn default() -> Self {
        SteerState {
            text: String::new(),
            clamp: false,
            strength: 4.0,
            max_new_tokens: 24,
            result: None,
        }
    }
}

/// Which panel a steering request came from, for its answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum SteerFrom {
    FeaturePage,
    PromptView,
}

/// The whole explorer.
pub struct Explorer {
    /// The open run.
    pub run: Option<RunData>,
    pub(crate) run_loading: Option<Loading<RunData>>,
    /// Index into run.dictionaries.
    pub dict: Option<usize>,
    pub(crate) tables: HashMap<PathBuf, Result<Arc<FeatureTable>, ExploreError>>,
    pub(crate) table_loading: Option<(PathBuf, Loading<FeatureTable>)>,
    /// The view shown.
    pub view: View,
    /// The feature list's state.
    pub list: ListState,
    /// Feature pages visited, for Back and Forward.
    pub history: Vec<u32>,
    /// Where in the history the current page is.
    pub at: usize,
    /// The current feature page's data.
    pub page: Option<Page>,
    /// The prompt view's state.
    pub prompt: PromptState,
    /// The feature page's steering panel.
    pub steer: SteerState,
    pub(crate) steer_from: SteerFrom,
    pub(crate) worker: Option<Worker>,
    /// Explains a feature from its page; `None` hides the button.
    pub(crate) explainer: Option<Arc<dyn FeatureExplainer>>,
    /// The explain job running, if any.
    pub(crate) explain_job: Option<ExplainJob>,
    /// The last explain job's dictionary, feature and answer.
    pub(crate) explained: Option<(PathBuf, u32, Result<Explained, ExploreError>)>,
    /// The (dictionary, head) cell selected in the heads view.
    pub heads_selected: Option<(usize, usize)>,
    /// The circuits view's task (index into the run's circuits) and selected (layer, head).
    pub circuit: (usize, Option<(u32, u32)>),
    /// What is remembered for the next launch.
    pub memory: Memory,
    /// A prompt to run as soon as a dictionary is selected.
    prompt_queued: bool,
    /// Where to load from when there is no repaint context (tests): loads finish synchronously.
    pub(crate) ctx: Option<egui::Context>,
}

impl Explorer {
    /// An explorer on `run` (or nothing, with `None`), with an optional prompt engine.
    pub fn new(
        run: Option<PathBuf>,
        memory: Memory,
        engine: Option<EngineFactory>,
        ctx: Option<egui::Context>,
    ) -> Explorer {
        let mut e = Explorer {
            run: None,
            run_loading: None,
            dict: None,
            tables: HashMap::new(),
            table_loading: None,
            view: View::Overview,
            list: ListState::default(),
            history: Vec::new(),
            at: 0,
            page: None,
            prompt: PromptState::default(),
            steer: SteerState::default(),
            steer_from: SteerFrom::FeaturePage,
            worker: engine.map(|f| Worker::start(f, ctx.clone())),
            explainer: None,
            explain_job: None,
            explained: None,
            heads_selected: None,
            circuit: (0, None),
            memory,
            prompt_queued: false,
            ctx,
        };
        if let Some(dir) = run.or_else(|| e.memory.run.clone()) {
            e.open_run(&dir);
        }
        e
    }

    /// Gives the feature page an "Explain" button that runs `explainer`.
    pub fn with_explainer(mut self, explainer: Arc<dyn FeatureExplainer>) -> Explorer {
        self.explainer = Some(explainer);
        self
    }

    /// Starts explaining feature `f` of the selected dictionary in the background.
    pub fn explain_feature(&mut self, f: u32) {
        let (Some(explainer), Some(dict)) = (&self.explainer, self.entry()) else {
            return;
        };
        if self.explain_job.is_none() {
            let dir = dict.dir.path().to_owned();
            self.explained = None;
            self.explain_job = Some(ExplainJob::start(
                explainer.clone(),
                &dir,
                f,
                self.ctx.clone(),
            ));
        }
    }

    /// The feature an explain job is running for, if any.
    pub fn explain_job_feature(&self) -> Option<u32> {
        self.explain_job.as_ref().map(|j| j.feature)
    }

    /// Files the explain job's answer and reads the dictionary's explanations again.
    fn finish_explain(&mut self, dict: PathBuf, f: u32, r: Result<Explained, ExploreError>) {
        if r.is_ok() {
            let key = self
                .tables
                .keys()
                .find(|k| k.parent() == Some(dict.as_path()))
                .cloned();
            if let Some(key) = key
                && let Some(Ok(t)) = self.tables.get(&key)
            {
                let fresh = FeatureTable::clone(t).with_explanations();
                self.tables.insert(key, Ok(Arc::new(fresh)));
                self.list.dirty = true;
            }
        }
        self.explained = Some((dict, f, r));
    }

    /// Starts on `view`, with `prompt` sent to the engine once the run is open.
    pub fn start_at(&mut self, view: Option<View>, prompt: Option<String>) {
        if let Some(v) = view {
            self.view = v;
        }
        if let Some(p) = prompt {
            self.prompt.text = p;
            self.prompt_queued = true;
        }
    }

    /// Opens the run (or dictionary) in `dir`, in the background.
    pub fn open_run(&mut self, dir: &Path) {
        let d = dir.to_owned();
        self.run_loading = Some(Loading::start(
            format!("opening {}", dir.display()),
            self.ctx.clone(),
            move |stage, _| {
                stage("manifest and dictionaries");
                Ok(RunData::open(&d))
            },
        ));
    }

    /// Blocks until background loads are done (tests and benchmarks).
    pub fn settle(&mut self) {
        if let Some(l) = self.run_loading.take() {
            let r = l.wait();
            self.finish_run(r);
        }
        if let Some((dir, l)) = self.table_loading.take() {
            let r = l.wait();
            self.finish_table(dir, r);
        }
        if let Some(job) = self.explain_job.take() {
            let r = job.wait();
            self.finish_explain(job.dict, job.feature, r);
        }
    }

    fn finish_run(&mut self, r: Result<RunData, ExploreError>) {
        let run = r.unwrap_or_else(|e| RunData {
            dir: PathBuf::new(),
            manifest: None,
            dictionaries: Vec::new(),
            circuits: Vec::new(),
            problems: vec![Problem {
                what: e.to_string(),
                fix: None,
            }],
        });
        // What is remembered belongs to the run it was remembered in.
        if self.memory.run.as_ref().is_some_and(|r| *r != run.dir) {
            self.memory = Memory {
                run: Some(run.dir.clone()),
                ..Memory::default()
            };
        }
        self.memory.run = Some(run.dir.clone());
        let wanted = self.memory.dictionary.clone();
        let pick = run
            .dictionaries
            .iter()
            .position(|d| Some(&d.name) == wanted.as_ref())
            .or(if run.dictionaries.is_empty() {
                None
            } else {
                Some(0)
            });
        self.run = Some(run);
        if let Some(i) = pick {
            self.select_dict(i);
        }
    }

    /// Selects the run's `i`th dictionary and starts reading its feature store.
    pub fn select_dict(&mut self, i: usize) {
        let Some(entry) = self.run.as_ref().and_then(|r| r.dictionaries.get(i)) else {
            return;
        };
        if self.dict != Some(i) {
            self.history.clear();
            self.at = 0;
            self.page = None;
            self.prompt.result = None;
            self.prompt.attribution = None;
            self.list = ListState::default();
        }
        self.dict = Some(i);
        self.memory.dictionary = Some(entry.name.clone());
        let dir = entry.features_dir();
        self.load_table(&dir);
    }

    pub(crate) fn load_table(&mut self, dir: &Path) {
        if self.tables.contains_key(dir)
            || self.table_loading.as_ref().is_some_and(|(d, _)| d == dir)
        {
            return;
        }
        let d = dir.to_owned();
        self.table_loading = Some((
            dir.to_owned(),
            Loading::start(
                format!("reading the feature store {}", dir.display()),
                self.ctx.clone(),
                move |stage, cancel| FeatureTable::open(&d, stage, cancel),
            ),
        ));
    }

    /// The selected dictionary.
    pub fn entry(&self) -> Option<&DictEntry> {
        self.run.as_ref()?.dictionaries.get(self.dict?)
    }

    /// The current dictionary's feature store, if it is loaded.
    pub fn table(&self) -> Option<Arc<FeatureTable>> {
        let dir = self.entry()?.features_dir();
        self.tables.get(&dir)?.as_ref().ok().cloned()
    }

    pub(crate) fn table_error(&self) -> Option<ExploreError> {
        let dir = self.entry()?.features_dir();
        self.tables.get(&dir)?.as_ref().err().cloned()
    }

    fn finish_table(&mut self, dir: PathBuf, r: Result<FeatureTable, ExploreError>) {
        self.tables.insert(dir, r.map(Arc::new));
        self.list.dirty = true;
        self.restore_feature();
    }

    fn restore_feature(&mut self) {
        if self.history.is_empty()
            && let (Some(f), Some(t)) = (self.memory.feature, self.table())
            && (f as usize) < t.len()
        {
            self.history.push(f);
            self.at = 0;
        }
    }

    /// Opens feature `f`'s page, as a new step in the history.
    pub fn open_feature(&mut self, f: u32) {
        if self.history.get(self.at) != Some(&f) {
            self.history.truncate(self.at + 1);
            self.history.push(f);
            self.at = self.history.len() - 1;
        }
        self.view = View::Feature;
    }

    /// The previous feature page.
    pub fn back(&mut self) {
        if self.at > 0 {
            self.at -= 1;
            self.view = View::Feature;
        }
    }

    /// The next feature page.
    pub fn forward(&mut self) {
        if self.at + 1 < self.history.len() {
            self.at += 1;
            self.view = View::Feature;
        }
    }

    /// The feature whose page is current.
    pub fn current_feature(&self) -> Option<u32> {
        self.history.get(self.at).copied()
    }

    /// Reads the current feature's page data if it is not the one held.
    pub(crate) fn ensure_page(&mut self) {
        let (Some(f), Some(t)) = (self.current_feature(), self.table()) else {
            return;
        };
        if self.page.as_ref().is_some_and(|p| p.feature == f) {
            return;
        }
        let t0 = std::time::Instant::now();
        let contexts = t.contexts(f);
        self.page = Some(Page {
            feature: f,
            contexts,
            seconds: t0.elapsed().as_secs_f64(),
        });
        self.memory.feature = Some(f);
    }

    pub(crate) fn poll(&mut self) {
        if let Some(l) = &self.run_loading
            && let Some(r) = l.poll()
        {
            self.run_loading = None;
            self.finish_run(r);
        }
        if let Some((dir, l)) = &self.table_loading
            && let Some(r) = l.poll()
        {
            let dir = dir.clone();
            self.table_loading = None;
            self.finish_table(dir, r);
        }
        if self.prompt_queued
            && let Some(dir) = self.entry().map(|d| d.dir.clone())
            && let Some(w) = &mut self.worker
        {
            self.prompt_queued = false;
            self.prompt.ran = self.prompt.text.clone();
            w.send(
                dir.path(),
                Request::View {
                    text: self.prompt.ran.clone(),
                    top: 5,
                },
            );
        }
        if let Some(job) = &self.explain_job
            && let Some(r) = job.poll()
        {
            let (dict, f) = (job.dict.clone(), job.feature);
            self.explain_job = None;
            self.finish_explain(dict, f, r);
        }
        if let Some(w) = &mut self.worker
            && let Some((asked, answer)) = w.poll()
        {
            match (asked, answer) {
                (_, Ok(Answer::View(v))) => self.prompt.result = Some(Ok(v)),
                (_, Ok(Answer::Attribution(a))) => self.prompt.attribution = Some(Ok(a)),
                (_, Ok(Answer::Steer(s))) => self.steered(Ok(s)),
                (Request::View { .. }, Err(e)) => self.prompt.result = Some(Err(e)),
                (Request::Attribution { .. }, Err(e)) => self.prompt.attribution = Some(Err(e)),
                (Request::Steer { .. }, Err(e)) => self.steered(Err(e)),
            }
        }
    }

    /// Sends a steering request from `from` about the open dictionary.
    pub(crate) fn send_steer(&mut self, from: SteerFrom, request: Request) {
        let dir = self.entry().map(|d| d.dir.clone());
        if let (Some(dir), Some(w)) = (dir, &mut self.worker) {
            self.steer_from = from;
            match from {
                SteerFrom::FeaturePage => self.steer.result = None,
                SteerFrom::PromptView => self.prompt.clamped = None,
            }
            w.send(dir.path(), request);
        }
    }

    fn steered(&mut self, r: Result<Steered, ExploreError>) {
        match self.steer_from {
            SteerFrom::FeaturePage => self.steer.result = Some(r),
            SteerFrom::PromptView => self.prompt.clamped = Some(r),
        }
    }
}
