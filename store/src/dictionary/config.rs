//! `cfg.json`, typed. saescope writes SAELens v6's fields (so SAELens loads its TopK, BatchTopK
//! and MP-SAE dictionaries) plus a `saescope` object with its own settings; it reads SAELens'
//! (v6, and the top-level `hook_name` of older versions) and sparsify's fields too. Every field
//! is optional here, since each producer writes a different subset; keys this type does not name
//! are kept in `other`, so a file read and written back loses nothing.

use serde::{Deserialize, Deserializer, Serialize};
use std::path::PathBuf;

/// A dictionary's `cfg.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DictConfig {
    /// Values read per token (SAELens, sparsify).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub d_in: Option<u64>,
    /// Latents (SAELens).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub d_sae: Option<u64>,
    /// Latents (sparsify); 0 there means `expansion_factor × d_in`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub num_latents: Option<u64>,
    /// Latents per input value (sparsify).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub expansion_factor: Option<u64>,
    /// SAELens' architecture: `topk`, `jumprelu`, `standard`, `matching_pursuit`; saescope adds `snmf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Older SAELens' activation function (`topk` there means a TopK dictionary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_fn: Option<String>,
    /// Older SAELens' activation arguments (`{"k": …}` for TopK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_fn_kwargs: Option<serde_json::Value>,
    /// Active latents per token (TopK), mean per token (BatchTopK).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub k: Option<u64>,
    /// Matching pursuit: steps at most (SAELens default: d_in).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub max_iterations: Option<u64>,
    /// Matching pursuit: stop a token once its residual's norm falls below this; 0 turns the
    /// rule off (SAELens default: 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_threshold: Option<f64>,
    /// Matching pursuit: stop a token after a step that left its set of active latents
    /// unchanged (SAELens default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_on_duplicate_support: Option<bool>,
    /// SAELens: whether the encoder reads x − b_dec (true, SAELens' default) or x itself
    /// (false, as Gemma Scope's dictionaries do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_b_dec_to_input: Option<bool>,
    /// SAELens: how each token is normalised before encoding and restored after decoding:
    /// `none`, `constant_norm_rescale`, `layer_norm`, or a training-time setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize_activations: Option<String>,
    /// SAELens TopK: whether pre-activations are scaled by their decoder row's norm before the
    /// top k are chosen (and divided back out in decoding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale_acts_by_decoder_norm: Option<bool>,
    /// `hook_z` for attention-output dictionaries over concatenated heads, else `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshape_activations: Option<String>,
    /// The hook, in SAELens before v6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_name: Option<String>,
    /// The model, in SAELens before v6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// SAELens v6's provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<SaeMetadata>,
    /// What saescope records about how it trained the dictionary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saescope: Option<SaescopeSection>,
    /// Every other key, kept as it was.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// SAELens v6's `metadata` object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SaeMetadata {
    /// The model the dictionary reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// The hook, in TransformerLens naming (`blocks.6.hook_resid_post`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_name: Option<String>,
    /// Tokens per training context.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub context_size: Option<u64>,
    /// Whether contexts began with BOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepend_bos: Option<bool>,
    /// Every other key, kept as it was.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The `saescope` object of a dictionary saescope trained.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SaescopeSection {
    /// The learner: `topk`, `batchtopk`, `mpsae`, `gba` or `snmf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The hook it was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// The harvest run it was trained on, as given to `saescope train`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<PathBuf>,
    /// The model's name, from the run's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Attention heads, for `attn.hook_z` dictionaries.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub n_heads: Option<u64>,
    /// The input scale that training divided by and that was folded into the saved weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_scale_folded: Option<f64>,
    /// Whether BOS positions were left out of training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_bos: Option<bool>,
    /// The whole training configuration (saescope-sae's `TrainConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Every other key, kept as it was.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl DictConfig {
    /// The hook: SAELens v6's `metadata.hook_name`, older SAELens' `hook_name`, or saescope's.
    pub fn hook(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.hook_name.as_deref())
            .or(self.hook_name.as_deref())
            .or_else(|| self.saescope.as_ref()?.hook.as_deref())
    }

    /// The model's name, as the producer recorded it.
    pub fn model(&self) -> Option<&str> {
        self.metadata
            .as_ref()
            .and_then(|m| m.model_name.as_deref())
            .or(self.model_name.as_deref())
            .or_else(|| self.saescope.as_ref()?.model.as_deref())
    }

    /// The harvest run saescope trained it on.
    pub fn run(&self) -> Option<&std::path::Path> {
        self.saescope.as_ref()?.run.as_deref()
    }

    /// The number of latents: SAELens' `d_sae`, else sparsify's `num_latents` (or
    /// `expansion_factor × d_in` where that is 0).
    pub fn latents(&self) -> Option<u64> {
        self.d_sae.or_else(|| match self.num_latents {
            Some(n) if n > 0 => Some(n),
            _ => Some(self.expansion_factor? * self.d_in?),
        })
    }

    /// TopK's k: the top-level field, older SAELens' `activation_fn_kwargs.k`, or saescope's
    /// training setting.
    pub fn k(&self) -> Option<u64> {
        self.k
            .or_else(|| self.activation_fn_kwargs.as_ref()?.get("k")?.as_u64())
            .or_else(|| self.trained_k())
    }

    /// The `k` saescope trained with (MP-SAE: pursuit steps).
    pub fn trained_k(&self) -> Option<u64> {
        self.saescope.as_ref()?.config.as_ref()?.get("k")?.as_u64()
    }

    /// The architecture, with older SAELens' `activation_fn: "topk"` read as `topk`.
    pub fn architecture(&self) -> Option<&str> {
        self.architecture
            .as_deref()
            .or(self.activation_fn.as_deref().filter(|a| *a == "topk"))
    }
}

/// A whole number, also when written as a float (`32.0`; SAELens allows a float `k`).
fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v: Option<serde_json::Number> = Option::deserialize(d)?;
    let Some(n) = v else { return Ok(None) };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number, found {n}"
        ))),
    }
}
