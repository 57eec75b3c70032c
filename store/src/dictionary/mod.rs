//! The dictionary directory: where a trained dictionary lives and what each of its files holds.
//! One type, [`DictDir`], names every file and folder in it, so the trainer, the analyses, the
//! exporters and the explorer agree on the layout; `store/README.md` specifies it.
//!
//! ```text
//! DICT/
//!   cfg.json                  the configuration, SAELens v6 fields plus a `saescope` object ([`DictConfig`])
//!   sae_weights.safetensors   the weights (SAELens layout); sparsify's `sae.safetensors` is read too
//!   checkpoint.safetensors    while training only: the whole training state, for --resume
//!   metrics.jsonl             the training log, a [`LogLine`] per logged step
//!   metrics.json              held-out reconstruction metrics ([`Metrics`])
//!   eval.json                 the dictionary spliced into the model ([`EvalReport`])
//!   features/                 the feature store (see [`crate::features`])
//!   explanations/             feature explanations (autointerp)
//!   scores/                   scores of those explanations (autointerp)
//! ```
//!
//! A dictionary trained by `saescope train` sits in its run at `RUN/dictionaries/NAME`; one
//! brought from elsewhere (SAELens, sparsify) may sit anywhere.

mod config;
mod reports;

pub use config::{DictConfig, SaeMetadata, SaescopeSection};
pub use reports::{EvalReport, LogLine, Metrics};

use crate::error::{Result, StoreError};
use crate::manifest::MANIFEST_FILE;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// The folder of a run that holds its dictionaries, one directory each.
pub const DICTIONARIES_DIR: &str = "dictionaries";
/// The configuration: SAELens fields, sparsify fields, and saescope's own.
pub const CONFIG_FILE: &str = "cfg.json";
/// The weights in the SAELens layout.
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";
/// The weights as EleutherAI's sparsify names them.
pub const SPARSIFY_WEIGHTS_FILE: &str = "sae.safetensors";
/// saescope's own tensors that SAELens has no key for (GBA's groups, per-head shares), kept out
/// of the weights file because SAELens refuses one with keys it does not expect.
pub const EXTRAS_FILE: &str = "saescope_extras.safetensors";
/// SAELens' training input scale (`{"scaling_factor": s}`), beside a checkpoint it saved
/// mid-training with `normalize_activations: expected_average_only_in`; read, never written.
pub const ACTIVATION_SCALER_FILE: &str = "activation_scaler.json";
/// The training state, present only while a training run is unfinished.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The training log, one JSON object per logged step.
pub const TRAINING_LOG_FILE: &str = "metrics.jsonl";
/// Held-out reconstruction metrics, written when training ends.
pub const METRICS_FILE: &str = "metrics.json";
/// The evaluation inside the model, written by `saescope eval`.
pub const EVAL_FILE: &str = "eval.json";
/// The feature store's folder, written by `saescope analyze`.
pub const FEATURES_DIR: &str = "features";
/// Feature explanations' folder (autointerp).
pub const EXPLANATIONS_DIR: &str = "explanations";
/// Explanation scores' folder (autointerp).
pub const SCORES_DIR: &str = "scores";

/// A dictionary's directory, and the path of everything in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DictDir {
    path: PathBuf,
}

impl DictDir {
    /// The dictionary in `path` (which need not exist yet: the trainer names its output so).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DictDir { path: path.into() }
    }

    /// The dictionary called `name` in the run `run`: `RUN/dictionaries/NAME`.
    pub fn in_run(run: &Path, name: &str) -> Self {
        DictDir::new(run.join(DICTIONARIES_DIR).join(name))
    }

    /// Every dictionary of a run (directories under `RUN/dictionaries` with a `cfg.json`), by name.
    pub fn list(run: &Path) -> Vec<DictDir> {
        let mut dirs: Vec<DictDir> = std::fs::read_dir(run.join(DICTIONARIES_DIR))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| DictDir::new(e.path())))
                    .filter(DictDir::exists)
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort_by(|a, b| a.path.cmp(&b.path));
        dirs
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's name (the dictionary's name in its run).
    pub fn name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Whether a dictionary is here: its `cfg.json` exists.
    pub fn exists(&self) -> bool {
        self.config().is_file()
    }

    /// `cfg.json`.
    pub fn config(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    /// `sae_weights.safetensors`.
    pub fn weights(&self) -> PathBuf {
        self.path.join(WEIGHTS_FILE)
    }

    /// sparsify's `sae.safetensors`.
    pub fn sparsify_weights(&self) -> PathBuf {
        self.path.join(SPARSIFY_WEIGHTS_FILE)
    }

    /// `saescope_extras.safetensors`.
    pub fn extras(&self) -> PathBuf {
        self.path.join(EXTRAS_FILE)
    }

    /// SAELens' `activation_scaler.json`.
    pub fn activation_scaler(&self) -> PathBuf {
        self.path.join(ACTIVATION_SCALER_FILE)
    }

    /// `checkpoint.safetensors`.
    pub fn checkpoint(&self) -> PathBuf {
        self.path.join(CHECKPOINT_FILE)
    }

    /// Whether training has written the weights and finished (no checkpoint is left), and
    /// whether a checkpoint waits to be resumed: looked up on object storage for a URL.
    pub fn training_state(&self) -> Result<(bool, bool)> {
        if crate::remote::is_url(&self.path) {
            let remote = crate::remote::Remote::open(&self.path)?;
            let weights = remote.size(WEIGHTS_FILE)?.is_some();
            let checkpoint = remote.size(CHECKPOINT_FILE)?.is_some();
            return Ok((weights && !checkpoint, checkpoint));
        }
        let checkpoint = self.checkpoint().exists();
        Ok((self.weights().exists() && !checkpoint, checkpoint))
    }

    /// `metrics.jsonl`.
    pub fn training_log(&self) -> PathBuf {
        self.path.join(TRAINING_LOG_FILE)
    }

    /// `metrics.json`.
    pub fn metrics(&self) -> PathBuf {
        self.path.join(METRICS_FILE)
    }

    /// `eval.json`.
    pub fn eval(&self) -> PathBuf {
        self.path.join(EVAL_FILE)
    }

    /// `features/`.
    pub fn features(&self) -> PathBuf {
        self.path.join(FEATURES_DIR)
    }

    /// `examples.parquet`: each latent's example windows for explaining and scoring.
    pub fn examples(&self) -> PathBuf {
        self.path.join(crate::examples::EXAMPLES_FILE)
    }

    /// `explanations.parquet`: one explanation (or failed attempt) per latent.
    pub fn explanations_table(&self) -> PathBuf {
        self.path.join(crate::explanations::EXPLANATIONS_FILE)
    }

    /// `explanations/`.
    pub fn explanations(&self) -> PathBuf {
        self.path.join(EXPLANATIONS_DIR)
    }

    /// `scores.parquet`: each latent's scores, by scorer, control and evidence.
    pub fn scores_table(&self) -> PathBuf {
        self.path.join(crate::scores::SCORES_FILE)
    }

    /// `score_windows.parquet`: every test window a scorer was asked about, with its answer.
    pub fn score_windows_table(&self) -> PathBuf {
        self.path.join(crate::scores::SCORE_WINDOWS_FILE)
    }

    /// `scores/`: the scorers' server responses (`scores/cache/`).
    pub fn scores(&self) -> PathBuf {
        self.path.join(SCORES_DIR)
    }

    /// The run this dictionary sits in: two levels up (`RUN/dictionaries/NAME`, or any
    /// `RUN/FOLDER/NAME` a user put it in), when that holds a `manifest.json`.
    pub fn enclosing_run(&self) -> Option<PathBuf> {
        self.path
            .parent()
            .and_then(Path::parent)
            .filter(|r| match crate::remote::is_url(r) {
                true => crate::Manifest::exists_in(r).unwrap_or(false),
                false => r.join(MANIFEST_FILE).is_file(),
            })
            .map(Path::to_owned)
    }

    /// Reads `cfg.json`. A missing file says that this is not a dictionary directory.
    pub fn read_config(&self) -> Result<DictConfig> {
        let path = self.config();
        if !path.is_file() {
            return Err(StoreError::NotADictionary {
                path: self.path.clone(),
            });
        }
        read_json(&path)
    }

    /// Reads `metrics.json`, or `None` when training has not written it.
    pub fn read_metrics(&self) -> Result<Option<Metrics>> {
        read_json_if_present(&self.metrics())
    }

    /// Reads `eval.json`, or `None` when the dictionary has not been evaluated.
    pub fn read_eval(&self) -> Result<Option<EvalReport>> {
        read_json_if_present(&self.eval())
    }

    /// Reads the training log: its lines, and how many lines could not be read (a log cut by a
    /// crash may end in a partial line).
    pub fn read_training_log(&self) -> Result<(Vec<LogLine>, usize)> {
        let path = self.training_log();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let mut lines = Vec::new();
        let mut bad = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<LogLine>(line) {
                Ok(l) => lines.push(l),
                Err(_) => bad += 1,
            }
        }
        Ok((lines, bad))
    }
}

/// A JSON file as `T`, the error naming the file and the field that did not fit.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| StoreError::io(path, e))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| StoreError::Json {
        path: path.to_owned(),
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

fn read_json_if_present<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}
