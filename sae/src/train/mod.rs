//! Training: the loop shared by the gradient-trained learners (TopK, BatchTopK, MP-SAE, GBA),
//! small enough to read in one sitting ([`gradient`]), and SNMF's alternating solver behind the
//! same inputs and outputs ([`snmf`]).
//!
//! Every setting is in [`TrainConfig`]. A killed run resumed with `resume` reaches the same
//! weights as an uninterrupted one ([`checkpoint`]); what a finished run writes is in
//! [`outputs`]. [`train_run`] trains on one hook of a harvest run, with a held-out set that
//! never shares a token with the training set.

mod checkpoint;
mod config;
mod eval;
mod gradient;
mod learner;
mod outputs;
mod report;
mod snmf;

pub use config::{Method, TrainConfig, UnknownMethod};
pub use eval::evaluate;
pub use learner::{constrained_step, geometric_median, native_bf16};
pub use outputs::Provenance;
pub use report::{Observer, TrainReport};

use crate::data::RunSource;
use crate::error::{Result, SaeError};
use saescope_store::dictionary::LogLine;
use saescope_store::{DictDir, Run};
use std::path::Path;
use tch::Device;

/// Trains a dictionary on `train`, evaluates it on `heldout`, and writes it to `out` with its
/// config, log and metrics; `from` is recorded in `cfg.json`.
// Each argument is a separate decision of the caller (data, held-out data, settings, place,
// resume, device, provenance, display); a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn train(
    train: &dyn crate::data::Source,
    heldout: Option<&dyn crate::data::Source>,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    device: Device,
    from: &Provenance,
    observer: &mut dyn Observer,
) -> Result<TrainReport> {
    cfg.validate(train.dim())?;
    let out = DictDir::new(out);
    std::fs::create_dir_all(out.path()).map_err(|e| SaeError::io(out.path(), e))?;
    // One writer at a time: a second process (a re-submitted job) is refused, not interleaved.
    let _lock = saescope_store::lock_dir(out.path())?;
    if cfg.method == Method::Snmf {
        if resume {
            // SNMF fits the whole batch at once and writes no checkpoint, so there is nothing
            // to continue; starting over silently would pass for a resume.
            return Err(SaeError::Config(
                "snmf keeps no checkpoints, so --resume cannot continue it; run it again without --resume (and a new --out, or remove the old one)".into(),
            ));
        }
        return snmf::run(train, heldout, cfg, &out, device, from, observer);
    }
    gradient::run(train, heldout, cfg, &out, resume, device, from, observer)
}

/// Uploads each checkpoint of a dictionary trained for object storage as it is written, so a
/// job killed on one machine resumes on another.
struct PushCheckpoints<'a> {
    inner: &'a mut dyn Observer,
    mirror: &'a saescope_store::mirror::Mirror,
}

impl Observer for PushCheckpoints<'_> {
    fn start(&mut self, total_steps: u64, batch_tokens: usize) {
        self.inner.start(total_steps, batch_tokens);
    }

    fn step(&mut self, step: u64, line: Option<&LogLine>) {
        self.inner.step(step, line);
    }

    fn checkpoint(&mut self) {
        // Training goes on if an upload fails: the checkpoint is still in the local copy, and
        // the final upload reports the error if it persists.
        if let Err(e) = self.mirror.push(None) {
            tracing::warn!("uploading the checkpoint: {e}");
        }
        self.inner.checkpoint();
    }
}

/// A training run on one hook of a harvest run, as `saescope train` starts it.
pub struct RunTraining<'a> {
    /// The harvest run's directory.
    pub run: &'a Path,
    /// The hook to train on.
    pub hook: &'a str,
    /// The settings.
    pub config: &'a TrainConfig,
    /// Where to write the dictionary (default: `RUN/dictionaries/HOOK-METHOD`).
    pub out: Option<&'a Path>,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Where to train.
    pub device: Device,
}

impl RunTraining<'_> {
    /// The dictionary directory this run writes.
    pub fn out(&self) -> DictDir {
        match self.out {
            Some(p) => DictDir::new(p),
            None => DictDir::in_run(
                self.run,
                &format!("{}-{}", self.hook, self.config.method.name()),
            ),
        }
    }

    /// Opens the run, holds out `heldout_fraction` of it (whole shards, or whole contexts of a
    /// run with one shard), trains on the rest and evaluates on what was held out.
    ///
    /// A dictionary directory on object storage (an `s3://` `--out`, or the default one inside a
    /// run there) is trained in a local copy, which starts from what is already there (a
    /// checkpoint to resume from), and uploaded when training ends, the weights last.
    pub fn train(&self, observer: &mut dyn Observer) -> Result<(DictDir, TrainReport)> {
        let out = self.out();
        if !saescope_store::remote::is_url(out.path()) {
            return self.train_here(observer);
        }
        let mirror = saescope_store::mirror::Mirror::open(out.path())?;
        let local = RunTraining {
            out: Some(mirror.local()),
            run: self.run,
            hook: self.hook,
            config: self.config,
            resume: self.resume,
            device: self.device,
        };
        let mut pushing = PushCheckpoints {
            inner: observer,
            mirror: &mirror,
        };
        let (dir, report) = local.train_here(&mut pushing)?;
        let weights = dir.weights();
        let last = weights.file_name().and_then(|n| n.to_str());
        mirror.push(last)?;
        Ok((out, report))
    }

    fn train_here(&self, observer: &mut dyn Observer) -> Result<(DictDir, TrainReport)> {
        let cfg = self.config;
        let out = self.out();
        if !self.resume && out.weights().exists() {
            return Err(SaeError::Config(format!(
                "{} already holds a dictionary; choose another output directory or remove it",
                out.path().display()
            )));
        }
        let run = Run::open(self.run)?;
        let (_, info) = run.hook(self.hook)?;
        let n_heads = self
            .hook
            .ends_with("attn.hook_z")
            .then(|| info.shape[0] as u64);
        let split = run.manifest().heldout_split(cfg.heldout_fraction);
        if split.heldout.is_empty() {
            tracing::warn!(
                "{}: no held-out text (heldout_fraction {}, {} tokens): the dictionary gets no held-out metrics",
                self.run.display(),
                cfg.heldout_fraction,
                run.manifest().total_tokens
            );
        }
        let mut src = RunSource::new(run.clone(), self.hook, split.train)?;
        src.exclude_bos = cfg.exclude_bos;
        src.seed = cfg.seed;
        src.shuffle_buffer = cfg.shuffle_buffer;
        let heldout = if split.heldout.is_empty() {
            None
        } else {
            let mut h = RunSource::new(run.clone(), self.hook, split.heldout)?;
            h.exclude_bos = cfg.exclude_bos;
            h.shuffle_buffer = 0;
            Some(h)
        };
        let m = run.manifest();
        let from = Provenance {
            model: Some(m.model.name.clone()),
            hook: Some(self.hook.to_owned()),
            context_size: Some(u64::from(m.context.ctx_len)),
            run: Some(self.run.to_owned()),
            n_heads,
        };
        let report = train(
            &src,
            heldout.as_ref().map(|h| h as &dyn crate::data::Source),
            cfg,
            out.path(),
            self.resume,
            self.device,
            &from,
            observer,
        )?;
        Ok((out, report))
    }
}
