//! Steering: generating with a dictionary's features pushed on at its hook, to read what a
//! feature does to the text.
//!
//! Two pushes, as SAELens' steering hooks and Neuronpedia's steer button make them:
//!   add    x ← x + s · Σ_f a_f^max · d_f       (s in "largest activations"; raw: s · Σ_f d̂_f)
//!   clamp  x ← x + Σ_f (v − a_f(x)) · d_f     (the feature set to v; the dictionary's
//!                                              reconstruction error kept)
//! with d_f the decoder row (for SNMF, the factor's column), a_f^max the largest activation the
//! feature store saw, and a_f(x) the dictionary's own encoding of x. An attention-output
//! dictionary's direction lives in the heads' space and is reshaped to [heads, d_head].
//!
//! [`strength_for_kl`] finds the add strength whose mean KL between clean and steered
//! next-token distributions over a prompt is a target (bisection, as delphi's intervention
//! scorer calibrates), and [`steer`] reports clean and steered continuations side by side with
//! the KL of each generated step and the change in log-probability of the feature's most
//! promoted tokens.

use crate::error::{AnalysisError, Result};
use crate::session::Session;
use saescope_activations::generate::{
    GenerateConfig, HookScope, PromptStyle, TextContinuation, continue_texts, prompt_ids,
};
use saescope_activations::hooks::{HookPoint, Hooks, Intervention};
use saescope_sae::dictionary::AnyDictionary;
use saescope_store::features::FeatureRow;
use serde::Serialize;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// How the features are pushed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Push {
    /// Add this many times each feature's contribution at its largest activation (raw: this
    /// many unit decoder directions).
    Add(f64),
    /// Set each feature's activation to this value.
    Clamp(f64),
}

/// Features of a session's dictionary, ready to push on.
pub struct Steering {
    /// The hook the dictionary reads.
    pub point: HookPoint,
    /// The features, in the order given.
    pub features: Vec<u32>,
    /// Each feature's add direction [n_features, d_in]: a_f^max · d_f, or d̂_f in raw units.
    add_rows: Tensor,
    /// Each feature's decoder row [n_features, d_in].
    decoder_rows: Tensor,
    /// The hook's value per token, e.g. [d_model] or [heads, d_head].
    shape: Vec<i64>,
    /// The dictionary's own copy, which the clamp's intervention holds.
    dict: Rc<AnyDictionary>,
}

impl Steering {
    /// Checks the features against the dictionary and, unless `raw`, the feature store that
    /// gives each one's largest activation.
    pub fn new(
        session: &Session,
        features: &[u32],
        store: Option<&[FeatureRow]>,
        raw: bool,
    ) -> Result<Steering> {
        // A copy of its own for the clamp's intervention to hold (tensors cannot be shared
        // across the explorer's threads, so the session's stays where it is).
        let opened = &session.opened;
        let d_in = opened.dict.as_dyn().d_in();
        let dict = Rc::new(AnyDictionary::load(
            opened.dir.path(),
            Some(d_in),
            session.device,
        )?);
        let n = dict.as_dyn().n_latents();
        if features.is_empty() {
            return Err(AnalysisError::Config("no feature to steer with".into()));
        }
        if let Some(f) = features.iter().find(|&&f| f as usize >= n) {
            return Err(AnalysisError::Config(format!(
                "feature {f}: the dictionary has {n} features (0 to {})",
                n - 1
            )));
        }
        let idx = Tensor::from_slice(&features.iter().map(|&f| f as i64).collect::<Vec<_>>());
        let atoms = dict.as_dyn().atoms();
        let decoder_rows = atoms.index_select(0, &idx.to_device(atoms.device()));
        let add_rows = if raw {
            &decoder_rows / decoder_rows.norm_scalaropt_dim(2.0, [1], true)
        } else {
            let rows = store.ok_or_else(|| {
                AnalysisError::Config(format!(
                    "{}: no feature store, so no feature's largest activation is known; run `saescope analyze` first, or add in the hook's raw units",
                    session.opened.dir.path().display()
                ))
            })?;
            let max_act = features
                .iter()
                .map(|&f| {
                    let row = rows.iter().find(|r| r.feature == f);
                    match row.map(|r| r.max_act) {
                        Some(m) if m > 0.0 => Ok(m as f64),
                        _ => Err(AnalysisError::Config(format!(
                            "feature {f} never fired in the feature store, so it has no typical activation; add in the hook's raw units instead"
                        ))),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            &decoder_rows
                * Tensor::from_slice(&max_act)
                    .to_kind(Kind::Float)
                    .to_device(atoms.device())
                    .unsqueeze(1)
        };
        let shape = session.hook_shape();
        Ok(Steering {
            point: session.opened.point,
            features: features.to_vec(),
            add_rows,
            decoder_rows,
            shape,
            dict,
        })
    }

    /// The vector `add` adds at strength `s`, in the hook's per-token shape.
    pub fn add_vector(&self, s: f64) -> Tensor {
        (self.add_rows.sum_dim_intlist(0, false, Kind::Float) * s).view(self.shape.as_slice())
    }

    /// Hooks that push by `push` at every position computed, or, with `from`, only at positions
    /// `from` and later of a full-sequence pass [batch, pos, ...].
    pub fn hooks(&self, push: Push, from: Option<usize>) -> Hooks {
        let mask = move |x: &Tensor| -> Option<Tensor> {
            from.map(|p| {
                let t = x.size()[1];
                let keep = Tensor::arange(t, (Kind::Int64, x.device()))
                    .ge(p as i64)
                    .to_kind(x.kind());
                let mut shape = vec![1, t];
                shape.extend(std::iter::repeat_n(1, x.dim() - 2));
                keep.view(shape.as_slice())
            })
        };
        let what = match push {
            Push::Add(s) => {
                let v = self.add_vector(s);
                // In the value's dtype: an f32 push would turn a bf16 model's activations f32.
                Intervention::Map(Box::new(move |x| {
                    let v = v.to_kind(x.kind());
                    match mask(x) {
                        None => x + v,
                        Some(m) => x + v * m,
                    }
                }))
            }
            Push::Clamp(value) => {
                let dict = self.dict.clone();
                let rows = self.decoder_rows.shallow_clone();
                let idx = Tensor::from_slice(
                    &self.features.iter().map(|&f| f as i64).collect::<Vec<_>>(),
                )
                .to_device(rows.device());
                let d_in = rows.size()[1];
                Intervention::Map(Box::new(move |x| {
                    let flat = x.reshape([-1, d_in]).to_kind(Kind::Float);
                    let acts = dict.as_dyn().encode(&flat).to_dense().index_select(1, &idx);
                    let delta = (-acts + value)
                        .matmul(&rows)
                        .view(x.size().as_slice())
                        .to_kind(x.kind());
                    match mask(x) {
                        None => x + delta,
                        Some(m) => x + delta * m,
                    }
                }))
            }
        };
        Hooks::new().intervene(self.point, what)
    }
}

/// Log-probabilities [batch, pos, vocab] of `ids` [1, pos] under `hooks`.
fn log_probs(session: &Session, ids: &[u32], hooks: &mut Hooks) -> Result<Tensor> {
    let input = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>())
        .view([1, -1])
        .to_device(session.device);
    let logits = session
        .model
        .model
        .forward(&input, hooks, true)?
        .expect("logits were asked for");
    Ok(logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float))
}

/// KL(clean ‖ steered) at each position [pos], from log-probabilities [1, pos, vocab].
fn kl(clean: &Tensor, steered: &Tensor) -> Vec<f64> {
    let per = (clean.exp() * (clean - steered)).sum_dim_intlist(-1, false, Kind::Float);
    Vec::<f64>::try_from(per.select(0, 0).to_kind(Kind::Double)).unwrap_or_default()
}

/// The mean KL between clean and steered next-token distributions over the prompt's
/// positions, adding at strength `s`.
pub fn prompt_kl(session: &Session, steering: &Steering, ids: &[u32], s: f64) -> Result<f64> {
    let clean = log_probs(session, ids, &mut Hooks::new())?;
    let steered = log_probs(session, ids, &mut steering.hooks(Push::Add(s), None))?;
    let per = kl(&clean, &steered);
    Ok(per.iter().sum::<f64>() / per.len().max(1) as f64)
}

/// The add strength whose mean KL over the prompt is `target` (nats), by doubling then
/// bisection to 1% of the target; fails when even strength 1024 stays below it.
pub fn strength_for_kl(
    session: &Session,
    steering: &Steering,
    ids: &[u32],
    target: f64,
) -> Result<f64> {
    strength_for(target, |s| prompt_kl(session, steering, ids, s))
}

/// The strength s with `kl(s)` = `target` (nats) for a KL that grows with s: doubling from 1
/// then bisection to 1% of the target; fails when even strength 1024 stays below it.
pub fn strength_for(target: f64, mut kl: impl FnMut(f64) -> Result<f64>) -> Result<f64> {
    if !(target > 0.0 && target.is_finite()) {
        return Err(AnalysisError::Config(format!(
            "target KL {target}: must be positive"
        )));
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while kl(hi)? < target {
        (lo, hi) = (hi, hi * 2.0);
        if hi > 1024.0 {
            return Err(AnalysisError::Data(format!(
                "even strength 1024 moves the next-token distributions by less than {target} nats"
            )));
        }
    }
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        let k = kl(mid)?;
        if (k - target).abs() <= 0.01 * target {
            return Ok(mid);
        }
        if k < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok((lo + hi) / 2.0)
}

/// A token the feature promotes, and its log-probability at the first new position.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenShift {
    /// Token id.
    pub id: u32,
    /// Its text.
    pub token: String,
    /// Log-probability without steering.
    pub clean: f64,
    /// Log-probability with steering.
    pub steered: f64,
}

/// Clean and steered continuations of one prompt.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SteerReport {
    /// The prompt as given.
    pub prompt: String,
    /// The features pushed.
    pub features: Vec<u32>,
    /// How: the push as asked, or for a KL target the add strength found.
    pub push: Push,
    /// The KL target, when the strength was found from one.
    pub target_kl: Option<f64>,
    /// Whether the prompt's own positions were left alone.
    pub only_new: bool,
    /// Continuations without steering, one per sample.
    pub clean: Vec<TextContinuation>,
    /// Continuations with steering, one per sample, with the same seeds.
    pub steered: Vec<TextContinuation>,
    /// Per steered sample, KL(clean ‖ steered) of the next-token distribution at each
    /// generated step, given the steered text so far.
    pub kl_per_step: Vec<Vec<f64>>,
    /// The tokens the first feature promotes most (from the feature store, else its decoder
    /// direction through the unembedding), at the position after the prompt.
    pub promoted: Vec<TokenShift>,
}

/// What to generate and how to push.
#[derive(Clone, Debug)]
pub struct SteerRequest {
    /// How prompts become ids.
    pub style: PromptStyle,
    /// Generation settings (samples share them; each sample has its own stream).
    pub generate: GenerateConfig,
    /// Continuations per prompt.
    pub samples: usize,
    /// Push only on generated tokens.
    pub only_new: bool,
}

/// Clean and steered continuations of each prompt, with the step KLs and the promoted tokens'
/// shift. `push` is used as given, except that `target_kl` replaces its strength per prompt.
pub fn steer(
    session: &Session,
    steering: &Steering,
    prompts: &[String],
    push: Push,
    target_kl: Option<f64>,
    request: &SteerRequest,
    promoted: &[u32],
) -> Result<Vec<SteerReport>> {
    if request.samples == 0 {
        return Err(AnalysisError::Config(
            "0 samples: nothing to generate".into(),
        ));
    }
    let scope = if request.only_new {
        HookScope::NewTokens
    } else {
        HookScope::All
    };
    let model = &session.model;
    let mut out = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let ids = prompt_ids(model, prompt, &request.style)?;
        let push = match target_kl {
            Some(k) => Push::Add(strength_for_kl(session, steering, &ids, k)?),
            None => push,
        };
        let copies = vec![prompt.clone(); request.samples];
        let clean = continue_texts(
            model,
            &copies,
            &request.style,
            &request.generate,
            &mut Hooks::new(),
            scope,
        )?;
        let steered = continue_texts(
            model,
            &copies,
            &request.style,
            &request.generate,
            &mut steering.hooks(push, None),
            scope,
        )?;
        let from = request.only_new.then_some(ids.len());
        let mut kl_per_step = Vec::with_capacity(steered.len());
        for c in &steered {
            let mut all = ids.clone();
            all.extend(&c.token_ids[..c.token_ids.len().saturating_sub(1)]);
            let clean_lp = log_probs(session, &all, &mut Hooks::new())?;
            let steered_lp = log_probs(session, &all, &mut steering.hooks(push, from))?;
            kl_per_step.push(kl(&clean_lp, &steered_lp)[ids.len() - 1..].to_vec());
        }
        let promoted = promoted_shift(session, steering, &ids, push, promoted)?;
        out.push(SteerReport {
            prompt: prompt.clone(),
            features: steering.features.clone(),
            push,
            target_kl,
            only_new: request.only_new,
            clean,
            steered,
            kl_per_step,
            promoted,
        });
    }
    Ok(out)
}

/// The log-probabilities of `tokens` at the position after prompt `ids`, without and with
/// `push` on the whole prompt.
pub fn promoted_shift(
    session: &Session,
    steering: &Steering,
    ids: &[u32],
    push: Push,
    tokens: &[u32],
) -> Result<Vec<TokenShift>> {
    let clean = log_probs(session, ids, &mut Hooks::new())?.select(1, -1);
    let steered = log_probs(session, ids, &mut steering.hooks(push, None))?.select(1, -1);
    tokens
        .iter()
        .map(|&id| {
            Ok(TokenShift {
                id,
                token: session.model.tokenizer.decode(&[id])?,
                clean: clean.double_value(&[0, id as i64]),
                steered: steered.double_value(&[0, id as i64]),
            })
        })
        .collect()
}

/// The `n` tokens feature `f` promotes most: the feature store's list when there is one, else
/// its decoder direction carried to the residual stream and through the unembedding.
pub fn promoted_tokens(
    session: &Session,
    f: u32,
    store: Option<&[FeatureRow]>,
    n: usize,
) -> Result<Vec<u32>> {
    if let Some(row) = store.and_then(|rows| rows.iter().find(|r| r.feature == f)) {
        return Ok(row.logit_top_ids.iter().take(n).copied().collect());
    }
    let model = &session.model.model;
    let d = session
        .opened
        .dict
        .as_dyn()
        .atoms()
        .select(0, f as i64)
        .to_kind(Kind::Float);
    let residual = match model.to_residual(session.opened.point) {
        Some(m) => m.to_kind(Kind::Float).matmul(&d),
        None => d,
    };
    let effect = model
        .unembed_folded()
        .to_kind(Kind::Float)
        .matmul(&residual);
    let (_, idx) = effect.topk(n as i64, 0, true, true);
    Ok(Vec::<i64>::try_from(idx)?
        .into_iter()
        .map(|i| i as u32)
        .collect())
}
