//! EleutherAI sparsify's layout: `cfg.json` (`d_in`, `num_latents` or `expansion_factor`, `k`,
//! and how it encodes) beside `sae.safetensors` (`encoder.weight`, `encoder.bias`, `W_dec`,
//! `b_dec`). Its dictionaries are TopK: relu(x − b_dec) · Wᵀ + b, the k largest kept. A trainer
//! checkpoint keeps one such folder per hook point, named for the module (`layers.6`).

use super::Weights;
use crate::dictionary::AnyDictionary;
use crate::error::Result;
use crate::topk::{Selection, TopKSae};
use saescope_store::dictionary::DictConfig;

/// Loads a sparsify TopK dictionary, refusing the settings saescope does not implement.
pub fn load(cfg: &DictConfig, w: &Weights) -> Result<AnyDictionary> {
    let k = cfg
        .k()
        .ok_or_else(|| w.config_error("field `k` is missing".into()))?;
    let flag = |name: &str| cfg.other.get(name).and_then(|v| v.as_bool());
    match cfg.other.get("activation").and_then(|v| v.as_str()) {
        None | Some("topk") => {}
        Some(other) => {
            return Err(w.config_error(format!(
                "field `activation` is `{other}`; saescope reads sparsify's topk"
            )));
        }
    }
    if flag("skip_connection") == Some(true) || w.has("W_skip") {
        return Err(w.config_error(
            "field `skip_connection` is true: the dictionary adds x · W_skipᵀ to its output, which saescope does not implement".into(),
        ));
    }
    // A transcoder encodes a module's input (for `layers.L.mlp`, the normed residual) and
    // predicts its output; saescope hooks no module inputs, so it would encode the wrong values.
    if flag("transcode") == Some(true) {
        return Err(w.config_error(
            "field `transcode` is true: the dictionary reads its module's input, which saescope does not hook".into(),
        ));
    }
    Ok(AnyDictionary::TopK(TopKSae {
        w_enc: w.latent_rows("encoder.weight")?,
        b_enc: w.vector("encoder.bias", true)?,
        w_dec: w.latent_rows("W_dec")?,
        b_dec: w.vector("b_dec", false)?,
        k: k as usize,
        selection: Selection::TopK,
        threshold: None,
        bf16_select: false,
    }))
}
