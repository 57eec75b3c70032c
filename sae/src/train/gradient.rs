//! The loop of the gradient-trained learners (TopK, BatchTopK, MP-SAE, GBA).
//!
//! Each step: a batch from the [`Batcher`], scaled by the input scale; the learner's forward
//! and hand-written backward; gradient projection against the unit-norm decoder rows; global
//! gradient clipping; Adam with linear warm-up then linear decay to zero; decoder rows
//! renormalised. Every `checkpoint_every` steps the whole state goes to the checkpoint.

use super::checkpoint::{self, Progress};
use super::config::TrainConfig;
use super::eval::count_rows;
use super::learner::Learner;
use super::outputs::{self, Provenance};
use super::report::{Observer, TrainReport};
use crate::data::{Batcher, Source, batch_to_device, rows_to_tensor};
use crate::error::{Result, SaeError};
use saescope_store::DictDir;
use std::io::Write;
use tch::{Device, Kind};

/// Trains, evaluates on `heldout`, and saves into `out`; see [`super::train`].
// Each argument is a separate decision of the caller (data, held-out data, settings, place,
// resume, device, provenance, display); a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    train: &dyn Source,
    heldout: Option<&dyn Source>,
    cfg: &TrainConfig,
    out: &DictDir,
    resume: bool,
    device: Device,
    from: &Provenance,
    observer: &mut dyn Observer,
) -> Result<TrainReport> {
    let d = train.dim();
    let total_steps = if cfg.tokens > 0 {
        cfg.tokens.div_ceil(cfg.batch_tokens as u64)
    } else {
        count_rows(train)? / cfg.batch_tokens as u64
    }
    .max(1);
    let warmup = (cfg.warmup_steps as u64).min(total_steps / 10);
    let lr_at = |step: u64, base: f64| {
        if step < warmup {
            base * (step + 1) as f64 / warmup as f64
        } else {
            base * (total_steps - step) as f64 / (total_steps - warmup).max(1) as f64
        }
    };
    let _guard = tch::no_grad_guard();
    let (mut learner, mut pos) = start(train, cfg, device)?;
    let log_path = out.training_log();
    if resume {
        pos = checkpoint::resume(&out.checkpoint(), &mut learner, cfg, device)?;
        checkpoint::truncate_log(&log_path, pos.step)?;
    } else {
        let _ = std::fs::remove_file(&log_path);
    }
    let base_lr = cfg.lr_for(cfg.latents_for(d));
    let mut batcher = Batcher::new(train, cfg.batch_tokens, pos.epoch, pos.in_epoch)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| SaeError::io(&log_path, e))?;
    observer.start(total_steps, cfg.batch_tokens);
    while pos.step < total_steps {
        let x = batch_to_device(&batcher.next_batch()?, d, device) / pos.scale;
        let lr = lr_at(pos.step, base_lr);
        let figures = learner.step(&x, cfg, lr, pos.step, pos.tokens);
        pos.step += 1;
        pos.tokens += cfg.batch_tokens as u64;
        pos.epoch = batcher.epoch;
        pos.in_epoch = batcher.in_epoch;
        // The figures are read (on a GPU, a wait for the step) only for a log line.
        let logged =
            pos.step.is_multiple_of(cfg.log_every.max(1) as u64) || pos.step == total_steps;
        let line = logged.then(|| figures.read(pos.step, pos.tokens, lr, cfg.aux_coefficient));
        observer.step(pos.step, line.as_ref());
        if let Some(line) = &line {
            writeln!(log, "{}", serde_json::to_string(line).expect("json"))
                .map_err(|e| SaeError::io(&log_path, e))?;
        }
        if cfg.checkpoint_every > 0
            && pos.step.is_multiple_of(cfg.checkpoint_every as u64)
            && pos.step < total_steps
        {
            log.sync_all().map_err(|e| SaeError::io(&log_path, e))?;
            checkpoint::write(&out.checkpoint(), &learner, &pos, cfg)?;
            observer.checkpoint();
        }
    }
    let dictionary = learner.into_dictionary(cfg, pos.scale);
    let metrics =
        outputs::evaluate_and_save(out, &dictionary, cfg, pos.scale, heldout, device, from)?;
    let _ = std::fs::remove_file(out.checkpoint());
    Ok(TrainReport {
        dictionary,
        steps: pos.step,
        tokens: pos.tokens,
        scale: pos.scale,
        metrics,
    })
}

/// A fresh learner: the input scale and the decoder bias's starting point come from the first
/// `init_tokens` rows.
fn start(train: &dyn Source, cfg: &TrainConfig, device: Device) -> Result<(Learner, Progress)> {
    let d = train.dim();
    let mut first = Batcher::new(train, cfg.init_tokens, 0, 0)?;
    let sample = rows_to_tensor(
        &first
            .next_batch()
            .or_else(|_| Batcher::new(train, cfg.batch_tokens, 0, 0)?.next_batch())?,
        d,
        device,
    );
    let scale = if cfg.normalize_input {
        let mean_norm = sample
            .norm_scalaropt_dim(2.0, [1], false)
            .mean(Kind::Float)
            .double_value(&[]);
        mean_norm / (d as f64).sqrt()
    } else {
        1.0
    };
    let learner = Learner::init(cfg, d, &(sample / scale), device);
    Ok((
        learner,
        Progress {
            step: 0,
            epoch: 0,
            in_epoch: 0,
            tokens: 0,
            scale,
        },
    ))
}
