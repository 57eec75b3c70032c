//! EleutherAI sparsify's layout: `cfg.json` (`d_in`, `num_latents` or `expansion_factor`, `k`)
//! beside `sae.safetensors` (`encoder.weight`, `encoder.bias`, `W_dec`, `b_dec`). Its
//! dictionaries are TopK.

use super::Weights;
use crate::dictionary::AnyDictionary;
use crate::error::Result;
use crate::topk::{Selection, TopKSae};
use saescope_store::dictionary::DictConfig;

/// Loads a sparsify TopK dictionary.
pub fn load(cfg: &DictConfig, w: &Weights) -> Result<AnyDictionary> {
    let k = cfg
        .k()
        .ok_or_else(|| w.config_error("field `k` is missing".into()))?;
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
