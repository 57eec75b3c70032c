//! What the explorer shows, read from a run directory: the run's manifest, its dictionaries with
//! their metrics and training curves, and each dictionary's feature store. Everything here only
//! reads, and nothing fails as a whole: what cannot be read becomes a [`Problem`] that says what
//! is missing and which command makes it.

use saescope_store::features::{
    ContextRow, ContextsFile, FeatureRow, NeighbourRow, Summary, read_features, read_neighbours,
    read_summary,
};
use saescope_store::manifest::{MANIFEST_FILE, Manifest};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

/// Something the explorer could not read, and how to make it.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
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

/// One line of a dictionary's `metrics.jsonl` training log.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct CurvePoint {
    #[serde(default)]
    pub tokens: f64,
    #[serde(default)]
    pub loss: f64,
    #[serde(default)]
    pub fvu: f64,
    #[serde(default)]
    pub l0: f64,
    #[serde(default)]
    pub dead_fraction: f64,
}

/// A dictionary in the run, with what its directory says about it.
#[derive(Clone, Debug)]
pub struct DictEntry {
    pub name: String,
    pub dir: PathBuf,
    pub method: String,
    pub hook: Option<String>,
    pub latents: Option<u64>,
    pub d_in: Option<u64>,
    /// Held-out metrics from `metrics.json`.
    pub fvu: Option<f64>,
    pub l0: Option<f64>,
    pub dead_fraction: Option<f64>,
    /// From `eval.json`.
    pub ce_loss_recovered: Option<f64>,
    pub curve: Vec<CurvePoint>,
    pub problems: Vec<Problem>,
}

impl DictEntry {
    /// Where its feature store lives.
    pub fn features_dir(&self) -> PathBuf {
        self.dir.join("features")
    }

    /// The layer and heads of an attention-output (`attn.hook_z`) dictionary.
    pub fn attention_layer(&self) -> Option<usize> {
        let hook = self.hook.as_deref()?;
        let rest = hook.strip_prefix("blocks.")?;
        let (layer, kind) = rest.split_once('.')?;
        (kind == "attn.hook_z").then(|| layer.parse().ok())?
    }

    fn read(dir: &Path) -> DictEntry {
        let name = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        let mut problems = Vec::new();
        let json = |file: &str, problems: &mut Vec<Problem>, fix: Option<String>| {
            let path = dir.join(file);
            match std::fs::read_to_string(&path) {
                Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        problems.push(Problem::new(format!("{}: {e}", path.display()), None));
                        None
                    }
                },
                Err(_) => {
                    if let Some(fix) = fix {
                        problems.push(Problem::new(
                            format!("{} is missing", path.display()),
                            Some(fix),
                        ));
                    }
                    None
                }
            }
        };
        let cfg = json("cfg.json", &mut problems, None).unwrap_or_default();
        let metrics = json("metrics.json", &mut problems, None).unwrap_or_default();
        let eval = json(
            "eval.json",
            &mut problems,
            Some(format!("saescope eval --dict {}", dir.display())),
        )
        .unwrap_or_default();
        let s = |v: &serde_json::Value, p: &str| {
            v.pointer(p).and_then(|x| x.as_str()).map(str::to_owned)
        };
        let u = |v: &serde_json::Value, p: &str| v.pointer(p).and_then(|x| x.as_u64());
        let f = |v: &serde_json::Value, p: &str| v.pointer(p).and_then(|x| x.as_f64());
        let mut curve = Vec::new();
        let log = dir.join("metrics.jsonl");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let mut bad = 0;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<CurvePoint>(line) {
                    Ok(p) => curve.push(p),
                    Err(_) => bad += 1,
                }
            }
            if bad > 0 {
                problems.push(Problem::new(
                    format!("{}: {bad} lines could not be read", log.display()),
                    None,
                ));
            }
        }
        DictEntry {
            name,
            dir: dir.to_owned(),
            method: s(&cfg, "/architecture").unwrap_or_else(|| "unknown".into()),
            hook: s(&cfg, "/metadata/hook_name")
                .or_else(|| s(&cfg, "/hook_name"))
                .or_else(|| s(&cfg, "/saescope/hook")),
            latents: u(&cfg, "/d_sae").or_else(|| u(&cfg, "/num_latents")),
            d_in: u(&cfg, "/d_in"),
            fvu: f(&metrics, "/fvu"),
            l0: f(&metrics, "/l0"),
            dead_fraction: f(&metrics, "/dead_fraction"),
            ce_loss_recovered: f(&eval, "/ce_loss_recovered"),
            curve,
            problems,
        }
    }
}

/// A run directory as the explorer sees it.
#[derive(Clone, Debug)]
pub struct RunData {
    pub dir: PathBuf,
    pub manifest: Option<Manifest>,
    pub dictionaries: Vec<DictEntry>,
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
                problems,
            };
        }
        if dir.join("cfg.json").exists() {
            dictionaries.push(DictEntry::read(dir));
            return RunData {
                dir: dir.to_owned(),
                manifest: None,
                dictionaries,
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
        let dicts = dir.join("dictionaries");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dicts)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.join("cfg.json").exists())
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        dictionaries.extend(dirs.iter().map(|d| DictEntry::read(d)));
        if dictionaries.is_empty() && manifest.is_some() {
            problems.push(Problem::new(
                "no dictionary has been trained on this run",
                Some(format!("saescope train --run {}", dir.display())),
            ));
        }
        RunData {
            dir: dir.to_owned(),
            manifest,
            dictionaries,
            problems,
        }
    }
}

/// A dictionary's feature store, read for browsing: summary, features and neighbours in
/// memory; contexts read one feature at a time from the Parquet file.
pub struct FeatureTable {
    pub dir: PathBuf,
    pub summary: Summary,
    pub features: Vec<FeatureRow>,
    neighbours: Vec<NeighbourRow>,
    /// neighbours[nb_start[f]..nb_start[f + 1]] are feature f's.
    nb_start: Vec<usize>,
    contexts: Result<ContextsFile, String>,
    /// Lower-cased text a search matches per feature: its top logit tokens.
    search: Vec<String>,
}

impl FeatureTable {
    /// Reads the store in `dir`, checking `cancel` between tables.
    pub fn open(
        dir: &Path,
        stage: &dyn Fn(&str),
        cancel: &AtomicBool,
    ) -> Result<FeatureTable, String> {
        let cancelled = || cancel.load(Ordering::Relaxed);
        stage("summary");
        let summary = read_summary(dir).map_err(|e| e.to_string())?;
        stage("features");
        let mut features = read_features(dir).map_err(|e| e.to_string())?;
        if cancelled() {
            return Err("cancelled".into());
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
                return Err(format!(
                    "{}: the features table does not hold features 0..{} once each",
                    dir.join(saescope_store::features::FEATURES_FILE).display(),
                    features.len()
                ));
            }
        }
        stage("neighbours");
        let mut neighbours = read_neighbours(dir).map_err(|e| e.to_string())?;
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
            return Err("cancelled".into());
        }
        stage("contexts index");
        let contexts = ContextsFile::open(dir).map_err(|e| e.to_string());
        let search = features
            .iter()
            .map(|r| r.logit_top_tokens.join("\u{1}").to_lowercase())
            .collect();
        Ok(FeatureTable {
            dir: dir.to_owned(),
            summary,
            features,
            neighbours,
            nb_start,
            contexts,
            search,
        })
    }

    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    pub fn feature(&self, f: u32) -> Option<&FeatureRow> {
        self.features.get(f as usize)
    }

    pub fn neighbours(&self, f: u32) -> &[NeighbourRow] {
        let f = f as usize;
        if f + 1 >= self.nb_start.len() {
            return &[];
        }
        &self.neighbours[self.nb_start[f]..self.nb_start[f + 1]]
    }

    /// Feature `f`'s top contexts and interval samples.
    pub fn contexts(&self, f: u32) -> Result<Vec<ContextRow>, String> {
        match &self.contexts {
            Ok(file) => file.of(f).map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        }
    }

    /// Whether the lower-cased `needle` appears among feature `f`'s top logit tokens.
    pub fn matches(&self, f: u32, needle: &str) -> bool {
        self.search
            .get(f as usize)
            .is_some_and(|s| s.contains(needle))
    }
}

/// Work on a background thread that reports its stage and can be cancelled; the UI polls it
/// each frame.
pub struct Loading<T> {
    pub what: String,
    stage: Arc<Mutex<String>>,
    cancel: Arc<AtomicBool>,
    rx: Receiver<Result<T, String>>,
    started: std::time::Instant,
}

impl<T: Send + 'static> Loading<T> {
    pub fn start(
        what: impl Into<String>,
        ctx: Option<eframe::egui::Context>,
        work: impl FnOnce(&dyn Fn(&str), &AtomicBool) -> Result<T, String> + Send + 'static,
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
                        .unwrap_or_else(|_| Err("the loader failed unexpectedly".into()));
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
    pub fn poll(&self) -> Option<Result<T, String>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err("the loader stopped".into())),
        }
    }

    /// Waits for the result (tests and benchmarks).
    pub fn wait(&self) -> Result<T, String> {
        self.rx
            .recv()
            .unwrap_or_else(|_| Err("the loader stopped".into()))
    }

    pub fn stage(&self) -> String {
        self.stage.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn seconds(&self) -> f32 {
        self.started.elapsed().as_secs_f32()
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
