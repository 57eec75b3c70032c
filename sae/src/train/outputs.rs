//! What a finished training run leaves in the dictionary's directory: the weights and
//! `cfg.json` (the dictionary, its settings and where its data came from) and `metrics.json`.

use super::config::TrainConfig;
use super::eval::evaluate;
use crate::data::Source;
use crate::dictionary::{AnyDictionary, head_share};
use crate::error::Result;
use saescope_store::DictDir;
use saescope_store::dictionary::{DictConfig, Metrics, SaeMetadata, SaescopeSection};
use std::path::PathBuf;

/// Where a dictionary's training data came from, recorded in its `cfg.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provenance {
    /// The model's name.
    pub model: Option<String>,
    /// The hook trained on.
    pub hook: Option<String>,
    /// Tokens per context in the run.
    pub context_size: Option<u64>,
    /// The harvest run.
    pub run: Option<PathBuf>,
    /// Attention heads, for `attn.hook_z` dictionaries (their per-head decoder shares are saved
    /// too).
    pub n_heads: Option<u64>,
}

/// Measures the finished dictionary on `heldout` (when there is held-out data), then saves it
/// with its metrics; returns the metrics.
// The arguments are what training ends with; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_and_save(
    out: &DictDir,
    dict: &AnyDictionary,
    cfg: &TrainConfig,
    scale: f64,
    heldout: Option<&dyn Source>,
    device: tch::Device,
    from: &Provenance,
) -> Result<Option<Metrics>> {
    let metrics = match heldout {
        Some(h) => Some(evaluate(
            dict.as_dyn(),
            h,
            cfg.eval_tokens,
            cfg.batch_tokens,
            device,
        )?),
        None => None,
    };
    save(out, dict, cfg, scale, metrics.as_ref(), from)?;
    Ok(metrics)
}

/// Writes the dictionary with its configuration and provenance, and the held-out metrics.
fn save(
    out: &DictDir,
    dict: &AnyDictionary,
    cfg: &TrainConfig,
    scale: f64,
    metrics: Option<&Metrics>,
    from: &Provenance,
) -> Result<()> {
    let mut extra = Vec::new();
    // Attention-output dictionaries: each feature's decoder-norm share per head.
    if let Some(heads) = from.n_heads {
        let share = head_share(&dict.as_dyn().atoms(), heads as i64);
        extra.push(("head_share".to_owned(), share));
    }
    let config = DictConfig {
        reshape_activations: from.n_heads.map(|_| "hook_z".to_owned()),
        metadata: Some(SaeMetadata {
            model_name: from.model.clone(),
            hook_name: from.hook.clone(),
            context_size: from.context_size,
            prepend_bos: Some(true),
            ..SaeMetadata::default()
        }),
        saescope: Some(SaescopeSection {
            method: Some(cfg.method.name().to_owned()),
            hook: from.hook.clone(),
            run: from.run.clone(),
            model: from.model.clone(),
            n_heads: from.n_heads,
            input_scale_folded: Some(scale),
            exclude_bos: Some(cfg.exclude_bos),
            config: Some(serde_json::to_value(cfg).expect("json")),
            ..SaescopeSection::default()
        }),
        ..DictConfig::default()
    };
    dict.save(out, &extra, config)?;
    if let Some(m) = metrics {
        let text = serde_json::to_string_pretty(m).expect("json");
        saescope_store::write_atomic(&out.metrics(), text.as_bytes())?;
    }
    Ok(())
}
