//! The checkpoint: the whole training state in one safetensors file (`checkpoint.safetensors`,
//! written atomically every `checkpoint_every` steps) with where training stands in its
//! metadata, so a killed run resumed from it reaches the same weights as an uninterrupted one.

use super::config::TrainConfig;
use super::learner::Learner;
use crate::error::{Result, SaeError};
use crate::format::safetensors::{read_safetensors_with_metadata, serialize};
use saescope_store::dictionary::LogLine;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Tensor};

/// Where training stands, and the input scale every step divides by.
pub(crate) struct Progress {
    /// Steps taken.
    pub step: u64,
    /// The data's epoch.
    pub epoch: u64,
    /// Batches taken in that epoch.
    pub in_epoch: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// The input scale training divides by.
    pub scale: f64,
}

/// Writes the learner's state and `pos` to `path`, atomically.
pub(crate) fn write(
    path: &Path,
    learner: &Learner,
    pos: &Progress,
    cfg: &TrainConfig,
) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert("format".into(), "saescope.train-checkpoint/1".into());
    meta.insert("step".into(), pos.step.to_string());
    meta.insert("epoch".into(), pos.epoch.to_string());
    meta.insert("in_epoch".into(), pos.in_epoch.to_string());
    meta.insert("tokens".into(), pos.tokens.to_string());
    meta.insert("scale".into(), format!("{:e}", pos.scale));
    meta.insert("config".into(), serde_json::to_string(cfg).expect("json"));
    match learner {
        Learner::TopK {
            adam, threshold, ..
        } => {
            meta.insert("adam_t".into(), adam.t.to_string());
            let t = threshold.double_value(&[]);
            if !t.is_nan() {
                meta.insert("threshold".into(), format!("{t:e}"));
            }
        }
        Learner::Mp { adam, .. } => {
            meta.insert("adam_t".into(), adam.t.to_string());
        }
        Learner::Gba { adam, stats, .. } => {
            meta.insert("adam_t".into(), adam.t.to_string());
            meta.insert("gba_buffer_tokens".into(), stats.tokens.to_string());
        }
    }
    let bytes = serialize(&learner.state(), Some(meta))?;
    saescope_store::write_atomic(path, &bytes)?;
    Ok(())
}

/// Restores `learner` and returns where training stood, from the checkpoint at `path`; refuses
/// a checkpoint written with other settings than `cfg`.
pub(crate) fn resume(
    path: &Path,
    learner: &mut Learner,
    cfg: &TrainConfig,
    device: Device,
) -> Result<Progress> {
    if !path.exists() {
        return Err(SaeError::Data(format!(
            "nothing to resume: {} does not exist",
            path.display()
        )));
    }
    let (t, m) = read_safetensors_with_metadata(path)?;
    let saved: TrainConfig =
        serde_json::from_str(m.get("config").map(String::as_str).unwrap_or("{}")).map_err(|e| {
            SaeError::Format {
                path: path.to_owned(),
                message: format!("config: {e}"),
            }
        })?;
    if &saved != cfg {
        return Err(SaeError::Config(format!(
            "{} was written with other settings; resume with the same config (saved: {})",
            path.display(),
            serde_json::to_string(&saved).unwrap_or_default()
        )));
    }
    let t: HashMap<String, Tensor> = t
        .into_iter()
        .map(|(k, v)| (k, v.to_device(device)))
        .collect();
    learner.restore(&t, &m, path)?;
    let num = |k: &str| m.get(k).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    Ok(Progress {
        step: num("step"),
        epoch: num("epoch"),
        in_epoch: num("in_epoch"),
        tokens: num("tokens"),
        scale: m.get("scale").and_then(|s| s.parse().ok()).unwrap_or(1.0),
    })
}

/// Keeps the log lines up to `step` (a resumed run rewrites the ones after its checkpoint).
pub(crate) fn truncate_log(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<LogLine>(l).is_ok_and(|x| x.step <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    saescope_store::write_atomic(path, kept.as_bytes())?;
    Ok(())
}
