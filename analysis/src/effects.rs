//! What a latent does when pushed on: the evidence of autointerp's output-side explainer.
//!
//! A latent's activating windows are cut just before the first token where it fires strongly,
//! so each prompt is the context leading up to the latent (as delphi's intervention scorer
//! cuts its prompts), with BOS in front as every harvested context had; when too few windows
//! give one, whole silent windows fill in. The latent's unit decoder direction is added at each prompt's last
//! position only, at the strength s whose mean KL(clean ‖ pushed) over the prompts' next-token
//! distributions is a target, found by [`crate::steer::strength_for`]:
//!   x_last ← x_last + s · d̂_f
//! Calibrating by KL rather than by activation puts every latent on the same footing, whatever
//! its scale. The evidence is, per prompt, the next tokens the push makes likelier, ranked by
//! their term of KL(pushed ‖ clean), p′ ln(p′/p), so that a token must both rise and end up
//! likely (a plain rise in probability favours tokens the context already made likely; a plain
//! log ratio, tokens that stay negligible); the same ranking averaged over the prompts; and the
//! tokens the direction promotes directly through the unembedding (the feature store's list
//! when there is one).
//!
//! The prompts' contexts (all but their last tokens) run through the model once into a KV cache;
//! since the push is at the last position, which no earlier one attends, each try of a strength
//! runs only the last tokens against that cache.

use crate::error::{AnalysisError, Result};
use crate::session::Session;
use crate::steer::{promoted_tokens, strength_for};
use saescope_activations::generate::{
    Continuation, GenerateConfig, HookScope, StopReason, generate, left_padded,
};
use saescope_activations::hooks::{Hooks, Intervention};
use saescope_activations::kv_cache::KvCache;
use saescope_activations::sampler::Sampling;
use saescope_store::examples::ExampleRow;
use saescope_store::features::FeatureRow;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How a latent is pushed and what is read off. Serialised into each output-side explanation's
/// record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EffectsConfig {
    /// Prompts pushed on at most (default 8).
    pub prompts: usize,
    /// Mean KL in nats between the clean and pushed next-token distributions that sets the push
    /// strength (default 1.0).
    pub target_kl: f64,
    /// Tokens listed per prompt, those the push made likelier most (default 5).
    pub top: usize,
    /// Tokens listed that the direction promotes through the unembedding (default 10).
    pub promoted: usize,
    /// Tokens of context a prompt has at least (default 4).
    pub min_context: usize,
    /// A window's strong activations, which its prompt stops before, exceed this share of the
    /// window's largest (default 0.3, the explainer's marking share).
    pub strong_share: f32,
}

impl Default for EffectsConfig {
    fn default() -> Self {
        EffectsConfig {
            prompts: 8,
            target_kl: 1.0,
            top: 5,
            promoted: 10,
            min_context: 4,
            strong_share: 0.3,
        }
    }
}

/// A next token and its probability without and with the push.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenRise {
    /// Token id.
    pub id: u32,
    /// Its text.
    pub token: String,
    /// Probability without the push (for the average over prompts, the mean).
    pub clean: f64,
    /// Probability with the push.
    pub pushed: f64,
}

/// One prompt and what the push did to its next token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PromptEffect {
    /// The prompt's text.
    pub text: String,
    /// The next tokens the push made likelier most, first the largest p′ ln(p′/p).
    pub rises: Vec<TokenRise>,
}

/// What pushing a latent does.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Effects {
    /// The latent.
    pub latent: u32,
    /// The push's strength s, in the hook's units (the norm of what is added).
    pub strength: f64,
    /// The mean KL it reached over the prompts, nats.
    pub kl: f64,
    /// Tokens the direction promotes most through the unembedding.
    pub promoted: Vec<String>,
    /// The tokens made likelier most, p′ ln(p′/p) averaged over the prompts.
    pub overall: Vec<TokenRise>,
    /// Each prompt's.
    pub prompts: Vec<PromptEffect>,
}

/// The prompts latent windows give: activating windows (strongest first is best) cut before
/// their first strong token, keeping those with `min_context` tokens (2 at least: a context and
/// a last token), then, when fewer than `prompts`, whole silent windows.
pub fn effect_prompts(
    active: &[&ExampleRow],
    silent: &[&ExampleRow],
    cfg: &EffectsConfig,
) -> Vec<Vec<u32>> {
    effect_prompt_rows(active, silent, cfg)
        .into_iter()
        .map(|(_, ids)| ids)
        .collect()
}

/// [`effect_prompts`] with the window each prompt comes from.
pub fn effect_prompt_rows<'a>(
    active: &[&'a ExampleRow],
    silent: &[&'a ExampleRow],
    cfg: &EffectsConfig,
) -> Vec<(&'a ExampleRow, Vec<u32>)> {
    let cut = active.iter().filter_map(|&r| {
        let max = r.max_act();
        let first = r
            .acts
            .iter()
            .position(|&a| max > 0.0 && a > cfg.strong_share * max)?;
        (first >= cfg.min_context.max(2)).then(|| (r, r.token_ids[..first].to_vec()))
    });
    let whole = silent
        .iter()
        .filter(|r| r.token_ids.len() >= cfg.min_context.max(2))
        .map(|&r| (r, r.token_ids.clone()));
    cut.chain(whole).take(cfg.prompts).collect()
}

/// Windows mostly start mid-context; the model saw every context begin with BOS, which many
/// models use as an attention sink, so each prompt is pushed on with one in front.
fn fronted(session: &Session, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let bos = session.model.tokenizer.bos;
    prompts
        .iter()
        .map(|p| match bos {
            Some(b) if p.first() != Some(&b) => {
                std::iter::once(b).chain(p.iter().copied()).collect()
            }
            _ => p.clone(),
        })
        .collect()
}

/// The text of prompt `ids` without the BOS [`fronted`] put in front.
fn prompt_text(session: &Session, ids: &[u32]) -> Result<String> {
    let bos = session.model.tokenizer.bos;
    Ok(session
        .model
        .tokenizer
        .decode(match (bos, ids.split_first()) {
            (Some(b), Some((&first, rest))) if first == b => rest,
            _ => ids,
        })?)
}

/// Latent `latent`'s unit decoder direction in the hook's per-token shape, refusing a latent
/// past the dictionary and a zero direction.
fn unit_direction(session: &Session, latent: u32) -> Result<Tensor> {
    let dict = session.opened.dict.as_dyn();
    if latent as usize >= dict.n_latents() {
        return Err(AnalysisError::Config(format!(
            "latent {latent}: the dictionary has {} latents",
            dict.n_latents()
        )));
    }
    let d = dict.atoms().select(0, latent as i64).to_kind(Kind::Float);
    let norm = d.norm().double_value(&[]);
    if norm <= 0.0 || !norm.is_finite() {
        return Err(AnalysisError::Data(format!(
            "latent {latent}: its decoder direction has norm {norm}, so pushing it does nothing"
        )));
    }
    Ok((d / norm)
        .view(session.hook_shape().as_slice())
        .to_device(session.device))
}

/// One prompt continued greedily without and with a push.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PushedText {
    /// The prompt's text.
    pub prompt: String,
    /// Its continuation without the push.
    pub clean: String,
    /// Its continuation with the push.
    pub pushed: String,
}

/// Each prompt (BOS in front, as [`effects`] pushes them) continued greedily by `new_tokens`
/// tokens, clean and with `strength` times latent `latent`'s unit decoder direction added at
/// the prompt's last position and at every new token: the texts delphi's intervention scorer
/// asks about.
pub fn pushed_continuations(
    session: &Session,
    latent: u32,
    prompts: &[Vec<u32>],
    strength: f64,
    new_tokens: usize,
) -> Result<Vec<PushedText>> {
    let add = unit_direction(session, latent)? * strength;
    let fronted = fronted(session, prompts);
    let model = &session.model;
    let cfg = GenerateConfig {
        max_new_tokens: new_tokens,
        sampling: Sampling::default(),
        stop: model.tokenizer.eos.into_iter().collect(),
    };
    let run = |hooks: &mut Hooks| {
        generate(
            &model.model,
            &fronted,
            &cfg,
            hooks,
            HookScope::All,
            &mut |_, _| {},
        )
    };
    let clean = run(&mut Hooks::new())?;
    // The prompts run as one left-padded pass, whose last column is every prompt's last token;
    // each new token then runs alone.
    let mut push = Hooks::new().intervene(
        session.opened.point,
        Intervention::Map(Box::new(move |x| {
            let t = x.size()[1];
            let add = add.to_kind(x.kind());
            if t == 1 {
                return x + add;
            }
            let mut shape = vec![1, t];
            shape.extend(std::iter::repeat_n(1, x.dim() - 2));
            let last = Tensor::arange(t, (Kind::Int64, x.device()))
                .eq(t - 1)
                .to_kind(x.kind())
                .view(shape.as_slice());
            x + add * last
        })),
    );
    let pushed = run(&mut push)?;
    let text = |c: &Continuation| -> Result<String> {
        let ids = match c.stop {
            StopReason::StopToken => &c.token_ids[..c.token_ids.len() - 1],
            _ => &c.token_ids[..],
        };
        Ok(model.tokenizer.decode(ids)?)
    };
    fronted
        .iter()
        .zip(clean.iter().zip(&pushed))
        .map(|(ids, (c, p))| {
            Ok(PushedText {
                prompt: prompt_text(session, ids)?,
                clean: text(c)?,
                pushed: text(p)?,
            })
        })
        .collect()
}

/// Pushes `latent` of the session's dictionary on at the end of each prompt, at the strength
/// that reaches `cfg.target_kl`, and reads off what rises.
pub fn effects(
    session: &Session,
    latent: u32,
    prompts: &[Vec<u32>],
    store: Option<&[FeatureRow]>,
    cfg: &EffectsConfig,
) -> Result<Effects> {
    let fronted = fronted(session, prompts);
    let batch = Batch::new(session, &fronted)?;
    let unit = unit_direction(session, latent)?;
    let clean = batch.next_log_probs(session, &mut Hooks::new())?;
    let pushed = |s: f64| batch.next_log_probs(session, &mut batch.push(session, &unit, s));
    let strength = strength_for(cfg.target_kl, |s| Ok(mean_kl(&clean, &pushed(s)?)))?;
    let steered = pushed(strength)?;
    let kl = mean_kl(&clean, &steered);
    let (p_clean, p_pushed) = (clean.exp(), steered.exp());
    let rise = (&p_pushed * (&steered - &clean)).clamp_min(0.0);
    let decode = |id: i64| session.model.tokenizer.decode(&[id as u32]);
    let rises = |row: &Tensor, before: &Tensor, after: &Tensor| -> Result<Vec<TokenRise>> {
        let (_, idx) = row.topk(cfg.top as i64, 0, true, true);
        Vec::<i64>::try_from(idx)?
            .into_iter()
            .map(|id| {
                Ok(TokenRise {
                    id: id as u32,
                    token: decode(id)?,
                    clean: before.double_value(&[id]),
                    pushed: after.double_value(&[id]),
                })
            })
            .collect()
    };
    let mut each = Vec::with_capacity(prompts.len());
    for (i, ids) in prompts.iter().enumerate() {
        let i = i as i64;
        each.push(PromptEffect {
            text: prompt_text(session, ids)?,
            rises: rises(&rise.get(i), &p_clean.get(i), &p_pushed.get(i))?,
        });
    }
    let overall = rises(
        &rise.mean_dim(0, false, Kind::Float),
        &p_clean.mean_dim(0, false, Kind::Float),
        &p_pushed.mean_dim(0, false, Kind::Float),
    )?;
    let promoted = promoted_tokens(session, latent, store, cfg.promoted)?
        .into_iter()
        .map(|id| decode(id as i64))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Effects {
        latent,
        strength,
        kl,
        promoted,
        overall,
        prompts: each,
    })
}

/// Prompts with their contexts run once: all but each prompt's last token, left-padded, in a
/// KV cache. A push is at the last position, which no earlier position attends, so each try
/// runs only the last tokens against a fork of that cache.
struct Batch {
    /// The contexts' keys and values.
    cache: KvCache,
    /// Each prompt's last token [b, 1].
    last: Tensor,
}

impl Batch {
    fn new(session: &Session, prompts: &[Vec<u32>]) -> Result<Batch> {
        if prompts.is_empty() || prompts.iter().any(|p| p.len() < 2) {
            return Err(AnalysisError::Config(
                "no prompt to push on (each needs a token of context and a last token)".into(),
            ));
        }
        let model = &session.model.model;
        let ctx = model.ctx_len();
        if let Some(p) = prompts.iter().find(|p| p.len() > ctx) {
            return Err(AnalysisError::Config(format!(
                "a prompt of {} tokens is longer than the model's context of {ctx}",
                p.len()
            )));
        }
        let contexts: Vec<Vec<u32>> = prompts.iter().map(|p| p[..p.len() - 1].to_vec()).collect();
        let (ids, valid) = left_padded(&contexts, session.device);
        let mut cache = KvCache::new(model.n_layers(), prompts.len(), session.device);
        cache.begin(&valid, ctx)?;
        // Only the keys and values are wanted; the contexts' logits go unread.
        let _ = model.forward_cached(&ids, &mut Hooks::new(), &mut cache)?;
        let last: Vec<i64> = prompts.iter().map(|p| p[p.len() - 1] as i64).collect();
        Ok(Batch {
            cache,
            last: Tensor::from_slice(&last)
                .view([-1, 1])
                .to_device(session.device),
        })
    }

    /// Log-probabilities of each prompt's next token [b, vocab] under `hooks`.
    fn next_log_probs(&self, session: &Session, hooks: &mut Hooks) -> Result<Tensor> {
        let model = &session.model.model;
        let mut cache = self.cache.fork();
        let real = Tensor::ones(self.last.size(), (Kind::Bool, self.last.device()));
        cache.begin(&real, model.ctx_len())?;
        let logits = model.forward_cached(&self.last, hooks, &mut cache)?;
        Ok(logits
            .select(1, 0)
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float))
    }

    /// Hooks adding `s · unit` at the last position (the only one a try runs).
    fn push(&self, session: &Session, unit: &Tensor, s: f64) -> Hooks {
        let add = unit * s;
        Hooks::new().intervene(
            session.opened.point,
            Intervention::Map(Box::new(move |x| x + add.to_kind(x.kind()))),
        )
    }
}

/// The mean over rows of KL(clean ‖ pushed), from log-probabilities [b, vocab].
fn mean_kl(clean: &Tensor, pushed: &Tensor) -> f64 {
    (clean.exp() * (clean - pushed))
        .sum_dim_intlist(-1, false, Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use saescope_store::examples::{ExampleKind, ExampleSet};

    fn row(kind: ExampleKind, ids: &[u32], acts: &[f32]) -> ExampleRow {
        ExampleRow {
            latent: 0,
            set: ExampleSet::Train,
            kind,
            bin: 0,
            source: 0,
            start: 0,
            token_ids: ids.to_vec(),
            acts: acts.to_vec(),
        }
    }

    #[test]
    fn prompts_stop_before_the_first_strong_token_then_silent_windows_fill_in() {
        let ids: Vec<u32> = (10..20).collect();
        // Strong from index 5 (0.3 × 10 = 3 is exceeded first by 4.0): the context is 0..5.
        let a = row(
            ExampleKind::Activating,
            &ids,
            &[0., 1., 2., 0., 0., 4., 10., 0., 0., 0.],
        );
        // Strong at index 2: too little context, left out.
        let b = row(
            ExampleKind::Activating,
            &ids,
            &[0., 0., 9., 0., 0., 0., 0., 0., 0., 0.],
        );
        let silent = row(ExampleKind::Random, &[7, 8, 9, 10, 11], &[0.0; 5]);
        let short = row(ExampleKind::Random, &[7, 8], &[0.0; 2]);
        let cfg = EffectsConfig::default();
        let got = effect_prompts(&[&a, &b], &[&short, &silent], &cfg);
        assert_eq!(got, vec![vec![10, 11, 12, 13, 14], vec![7, 8, 9, 10, 11]]);
        let one = EffectsConfig { prompts: 1, ..cfg };
        assert_eq!(effect_prompts(&[&a, &b], &[&silent], &one).len(), 1);
    }
}
