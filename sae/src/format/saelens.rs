//! The SAELens v6 layout, as SAELens and saescope write it: `cfg.json`'s `architecture` picks
//! the loader, and each reads the tensors its architecture names. saescope's own methods use
//! the same layout with extra tensors (GBA's groups and targets) or architectures SAELens does
//! not have (`snmf`).

use super::{Weights, mp_stop};
use crate::dictionary::{AnyDictionary, MpDictionary, SnmfDictionary};
use crate::error::Result;
use crate::gba::GbaSae;
use crate::mpsae::MpSae;
use crate::snmf::Snmf;
use crate::topk::{Selection, TopKSae};
use saescope_store::dictionary::DictConfig;
use tch::{Kind, Tensor};

/// Loads the dictionary `cfg.json`'s architecture names (`standard` when it names none).
pub fn load(cfg: &DictConfig, w: &Weights) -> Result<AnyDictionary> {
    let gba_extras = w.has("gba_group") && w.has("gba_target_frequency");
    match cfg.architecture().unwrap_or("standard") {
        "jumprelu" if gba_extras => gba(w, true),
        "topk" => topk(cfg, w, false),
        "jumprelu" => topk(cfg, w, true),
        "matching_pursuit" => matching_pursuit(cfg, w),
        "snmf" => snmf(w),
        "standard" => gba(w, false),
        other => Err(w.config_error(format!(
            "architecture `{other}` is not supported (topk, jumprelu, standard, matching_pursuit, snmf)"
        ))),
    }
}

/// TopK (`topk`), or BatchTopK saved as SAELens' `jumprelu` with its inference threshold.
fn topk(cfg: &DictConfig, w: &Weights, jumprelu: bool) -> Result<AnyDictionary> {
    Ok(AnyDictionary::TopK(TopKSae {
        w_enc: w.latent_rows("W_enc")?,
        b_enc: w.vector("b_enc", true)?,
        w_dec: w.latent_rows("W_dec")?,
        b_dec: w.vector("b_dec", false)?,
        k: cfg.k().unwrap_or(0) as usize,
        selection: if jumprelu {
            Selection::BatchTopK
        } else {
            Selection::TopK
        },
        threshold: if jumprelu {
            Some(w.vector("threshold", true)?)
        } else {
            None
        },
        bf16_select: false,
    }))
}

/// GBA: a JumpReLU (`jump`, its threshold folded back into the bias) or ReLU (`standard`)
/// encoder. A plain SAELens `standard` dictionary has no groups: one group, target 1.
fn gba(w: &Weights, jump: bool) -> Result<AnyDictionary> {
    let (group, target) = if w.has("gba_group") && w.has("gba_target_frequency") {
        (w.raw("gba_group")?, w.raw("gba_target_frequency")?)
    } else {
        let n = w.d_sae() as i64;
        (
            Tensor::zeros([n], (Kind::Int64, w.device())),
            Tensor::ones([n], (Kind::Float, w.device())),
        )
    };
    let b_enc = if jump {
        w.vector("b_enc", true)? - w.vector("threshold", true)?
    } else {
        w.vector("b_enc", true)?
    };
    Ok(AnyDictionary::Gba(GbaSae {
        w_enc: w.latent_rows("W_enc")?,
        b_enc,
        w_dec: w.latent_rows("W_dec")?,
        b_dec: w.vector("b_dec", false)?,
        group,
        target,
        jump,
    }))
}

/// MP-SAE (`matching_pursuit`): tied atoms, with the stopping rule `cfg.json` states.
fn matching_pursuit(cfg: &DictConfig, w: &Weights) -> Result<AnyDictionary> {
    let stop = mp_stop(cfg, w.d_in());
    Ok(AnyDictionary::Mp(MpDictionary {
        sae: MpSae {
            atoms: w.latent_rows("W_dec")?,
            b_dec: w.vector("b_dec", false)?,
            k: cfg.trained_k().map_or(stop.max_steps, |k| k as usize),
            bf16_gram: false,
        },
        stop,
    }))
}

/// SNMF's nonnegative features.
fn snmf(w: &Weights) -> Result<AnyDictionary> {
    Ok(AnyDictionary::Snmf(SnmfDictionary {
        snmf: Snmf {
            features: w.latent_rows("W_dec")?,
        },
        encode_iters: 50,
    }))
}
