//! EleutherAI sparsify's layout: `cfg.json` (`d_in`, `num_latents` or `expansion_factor`, `k`,
//! and how it encodes) beside `sae.safetensors` (`encoder.weight`, `encoder.bias`, `W_dec`,
//! `b_dec`). Its dictionaries are TopK: relu(x − b_dec) · Wᵀ + b, the k largest kept. A trainer
//! checkpoint keeps one such folder per hook point, named for the module (`layers.6`). TopK
//! dictionaries are also written in this layout ([`save`]).

use super::Weights;
use crate::dictionary::AnyDictionary;
use crate::error::{Result, SaeError};
use crate::topk::{Selection, TopKSae};
use saescope_store::DictDir;
use saescope_store::dictionary::DictConfig;
use std::path::Path;

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

/// Writes a TopK dictionary in sparsify's layout (`cfg.json` and `sae.safetensors` in `dir`), so
/// sparsify and the tools built on it load it. Only a dictionary that encodes as sparsify does
/// is written: a per-token top-k over relu((x − b_dec) · Wᵀ + b), without per-token
/// normalisation. sparsify's trainer names each hook's folder after its module (`layers.6`);
/// `dir` is that folder.
pub fn save(dict: &AnyDictionary, dir: &Path) -> Result<()> {
    let refuse = |why: &str| {
        SaeError::Config(format!(
            "sparsify's layout cannot hold this dictionary: {why}"
        ))
    };
    let s = match dict {
        AnyDictionary::TopK(s) if s.selection == Selection::TopK && s.threshold.is_none() => s,
        AnyDictionary::TopK(_) => {
            return Err(refuse(
                "a BatchTopK dictionary encodes with a learned threshold, sparsify with a top-k per token",
            ));
        }
        AnyDictionary::Normalized(_) => {
            return Err(refuse("sparsify has no per-token normalisation"));
        }
        _ => return Err(refuse("sparsify's dictionaries are TopK")),
    };
    let (n, d) = (s.n_latents(), s.d_in());
    let cfg = serde_json::json!({
        "activation": "topk",
        "expansion_factor": (n / d).max(1),
        "normalize_decoder": true,
        "num_latents": n,
        "k": s.k,
        "multi_topk": false,
        "skip_connection": false,
        "transcode": false,
        "d_in": d,
    });
    let cpu = |t: &tch::Tensor| t.to_device(tch::Device::Cpu).contiguous();
    let tensors = [
        ("encoder.weight".to_owned(), cpu(&s.w_enc)),
        ("encoder.bias".to_owned(), cpu(&s.b_enc)),
        ("W_dec".to_owned(), cpu(&s.w_dec)),
        ("b_dec".to_owned(), cpu(&s.b_dec)),
    ];
    let out = DictDir::new(dir);
    std::fs::create_dir_all(dir).map_err(|e| SaeError::io(dir, e))?;
    let bytes = super::safetensors::serialize(&tensors, None)?;
    saescope_store::write_atomic(&out.sparsify_weights(), &bytes)?;
    let text = serde_json::to_string_pretty(&cfg).expect("a JSON object");
    saescope_store::write_atomic(&out.config(), text.as_bytes())?;
    Ok(())
}
