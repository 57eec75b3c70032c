//! The SAELens v6 layout, as SAELens and saescope write it: `cfg.json`'s `architecture` picks
//! the loader, and each reads the tensors its architecture names. saescope's own methods use
//! the same layout, with GBA's groups and targets in the extras file, or architectures SAELens
//! does not have (`snmf`).

use super::{GBA_GROUP, GBA_TARGET, Weights, mp_stop};
use crate::dictionary::{AnyDictionary, MpDictionary, Normalized, SnmfDictionary};
use crate::error::{Result, SaeError};
use crate::gba::GbaSae;
use crate::mpsae::MpSae;
use crate::snmf::Snmf;
use crate::token_norm::TokenNorm;
use crate::topk::{Selection, TopKSae};
use saescope_store::DictDir;
use saescope_store::dictionary::DictConfig;
use tch::{Kind, Tensor};

/// Loads the dictionary `cfg.json`'s architecture names (`standard` when it names none), in
/// the form saescope computes with: SAELens' settings that change how the input is read are
/// folded into the weights where that is exact, or wrap the dictionary where it is not, and
/// a setting saescope does not implement is refused rather than ignored.
pub fn load(cfg: &DictConfig, w: &Weights) -> Result<AnyDictionary> {
    let reading = Reading::of(cfg, w)?;
    let gba_extras = w.has(GBA_GROUP) && w.has(GBA_TARGET);
    let dict = match cfg.architecture().unwrap_or("standard") {
        "jumprelu" if gba_extras => gba(w, true),
        "topk" => topk(cfg, w, false),
        "jumprelu" => topk(cfg, w, true),
        "matching_pursuit" => matching_pursuit(cfg, w),
        "snmf" => snmf(w),
        "standard" => gba(w, false),
        other => Err(w.config_error(format!(
            "architecture `{other}` is not supported (topk, jumprelu, standard, matching_pursuit, snmf)"
        ))),
    }?;
    reading.apply(dict, w)
}

/// SAELens' fields on how a dictionary reads its input, checked.
struct Reading {
    apply_b_dec_to_input: bool,
    rescale_by_decoder_norm: bool,
    /// The constant the dictionary's inputs were multiplied by in training, not yet folded in.
    input_scale: Option<f64>,
    norm: TokenNorm,
}

impl Reading {
    fn of(cfg: &DictConfig, w: &Weights) -> Result<Reading> {
        let mut input_scale = None;
        let norm = match cfg.normalize_activations.as_deref().unwrap_or("none") {
            "none" => TokenNorm::None,
            "constant_norm_rescale" => TokenNorm::ConstantNormRescale,
            "layer_norm" => TokenNorm::LayerNorm,
            "expected_average_only_in" => {
                input_scale = Some(scaling_factor(w)?);
                TokenNorm::None
            }
            other => {
                return Err(w.config_error(format!(
                    "field `normalize_activations` is `{other}`; saescope reads none, constant_norm_rescale, layer_norm and expected_average_only_in (with activation_scaler.json)"
                )));
            }
        };
        match cfg.reshape_activations.as_deref().unwrap_or("none") {
            // saescope stores attn.hook_z with the heads already side by side, which is what
            // SAELens' `hook_z` reshaping makes of [heads, d_head].
            "none" | "hook_z" => {}
            other => {
                return Err(w.config_error(format!(
                    "field `reshape_activations` is `{other}`; saescope reads none and hook_z"
                )));
            }
        }
        Ok(Reading {
            apply_b_dec_to_input: cfg.apply_b_dec_to_input.unwrap_or(true),
            rescale_by_decoder_norm: cfg.rescale_acts_by_decoder_norm.unwrap_or(false),
            input_scale,
            norm,
        })
    }

    fn apply(&self, mut dict: AnyDictionary, w: &Weights) -> Result<AnyDictionary> {
        if !self.apply_b_dec_to_input {
            fold_input_bias(&mut dict, w)?;
        }
        if let Some(s) = self.input_scale {
            fold_input_scale(&mut dict, s, w)?;
        }
        if self.rescale_by_decoder_norm {
            match &mut dict {
                AnyDictionary::TopK(s) => fold_decoder_norms(s),
                _ => {
                    return Err(w.config_error(
                        "field `rescale_acts_by_decoder_norm` is true, which saescope reads only for topk".into(),
                    ));
                }
            }
        }
        Ok(match self.norm {
            TokenNorm::None => dict,
            norm => AnyDictionary::Normalized(Box::new(Normalized { inner: dict, norm })),
        })
    }
}

/// `apply_b_dec_to_input: false` (Gemma Scope's setting): the encoder reads x, not x − b_dec.
/// Since x·w + b = (x − b_dec)·w + (b + w·b_dec), moving w·b_dec into the encoder bias gives
/// the same pre-activations (to rounding) through saescope's one encoder form.
fn fold_input_bias(dict: &mut AnyDictionary, w: &Weights) -> Result<()> {
    let fold = |w_enc: &Tensor, b_enc: &mut Tensor, b_dec: &Tensor| {
        *b_enc = &*b_enc + w_enc.mv(b_dec);
    };
    match dict {
        AnyDictionary::TopK(s) => fold(&s.w_enc, &mut s.b_enc, &s.b_dec),
        AnyDictionary::Gba(g) => fold(&g.w_enc, &mut g.b_enc, &g.b_dec),
        // SAELens' pursuit then ignores b_dec on both sides: it starts from x and adds none back.
        AnyDictionary::Mp(m) => m.sae.b_dec = m.sae.b_dec.zeros_like(),
        _ => {
            return Err(w.config_error(
                "field `apply_b_dec_to_input` is false, which saescope reads only for topk, jumprelu, standard and matching_pursuit".into(),
            ));
        }
    }
    Ok(())
}

/// The factor a SAELens checkpoint saved mid-training with `expected_average_only_in` states in
/// `activation_scaler.json` beside it (a finished dictionary has it folded in and says `none`).
fn scaling_factor(w: &Weights) -> Result<f64> {
    let path = DictDir::new(w.dir()).activation_scaler();
    let missing = || {
        w.config_error(format!(
            "field `normalize_activations` is `expected_average_only_in`, but {} is missing: the factor the inputs were scaled by in training is unknown",
            path.display()
        ))
    };
    let text = std::fs::read_to_string(&path).map_err(|_| missing())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| SaeError::Format {
        path: path.clone(),
        message: format!("not JSON: {e}"),
    })?;
    v.get("scaling_factor")
        .and_then(|s| s.as_f64())
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| SaeError::Format {
            path,
            message: "field `scaling_factor` is missing or not a positive number".into(),
        })
}

/// SAELens' fold of a training input scale s (the model saw s·x): W_enc·s, W_dec/s, b_dec/s;
/// the same map on unscaled x, as SAELens' own `fold_activation_norm_scaling_factor` makes it.
fn fold_input_scale(dict: &mut AnyDictionary, s: f64, w: &Weights) -> Result<()> {
    // b_enc and a threshold compare pre-activations, which the fold leaves as they were.
    let fold = |w_enc: &mut Tensor, w_dec: &mut Tensor, b_dec: &mut Tensor| {
        *w_enc = &*w_enc * s;
        *w_dec = &*w_dec / s;
        *b_dec = &*b_dec / s;
    };
    match dict {
        AnyDictionary::TopK(d) => fold(&mut d.w_enc, &mut d.w_dec, &mut d.b_dec),
        AnyDictionary::Gba(d) => fold(&mut d.w_enc, &mut d.w_dec, &mut d.b_dec),
        _ => {
            return Err(w.config_error(
                "field `normalize_activations` is `expected_average_only_in`, which saescope folds only for topk, jumprelu and standard".into(),
            ));
        }
    }
    Ok(())
}

/// `rescale_acts_by_decoder_norm`: TopK picks and keeps pre-activations times ‖W_dec[j]‖, and
/// decoding divides by it again. Scaling encoder row j (and its bias) by ‖W_dec[j]‖ and the
/// decoder row by its inverse is the same map with unit decoder rows.
fn fold_decoder_norms(s: &mut TopKSae) {
    let norms = s.w_dec.norm_scalaropt_dim(2.0, [1], true);
    s.w_enc = &s.w_enc * &norms;
    s.b_enc = &s.b_enc * norms.squeeze_dim(1);
    // A zero row stays zero (its latent never fires) instead of becoming NaN.
    s.w_dec = &s.w_dec / norms.clamp_min(1e-12);
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
    let (group, target) = if w.has(GBA_GROUP) && w.has(GBA_TARGET) {
        (w.raw(GBA_GROUP)?, w.raw(GBA_TARGET)?)
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
