//! Text generation: a batch of prompts runs through the model once (prefill, left-padded so
//! every prompt ends in the same column), then each step feeds one new token per prompt against
//! the [`KvCache`] (decode), until every prompt has met a stop token, its limit of new tokens or
//! the model's context.
//!
//! Hooks act during generation as in any forward pass, on the positions being computed: the
//! prompts during prefill, then each new token. [`HookScope::NewTokens`] leaves the prompts
//! alone. A prompt's continuation does not depend on the other prompts in its batch: padding is
//! never attended, positions count from each prompt's first token, and each prompt samples from
//! its own random stream ([`Sampler`]).

use crate::chat::Message;
use crate::error::ModelError;
use crate::hooks::{HookPoint, Hooks};
use crate::kv_cache::KvCache;
use crate::model::{Model, TextModel};
use crate::sampler::{Sampler, Sampling};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateConfig {
    /// New tokens per prompt at most.
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: Sampling,
    /// Token ids that end a continuation; the stop token is kept as its last token.
    pub stop: Vec<u32>,
}

/// Why a continuation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It produced one of the stop tokens.
    StopToken,
    /// It reached `max_new_tokens`.
    MaxTokens,
    /// Prompt and continuation filled the model's context.
    Context,
}

/// One prompt's new tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Continuation {
    /// The new token ids, the stop token included when there was one.
    pub token_ids: Vec<u32>,
    /// Why it ended.
    pub stop: StopReason,
}

/// Which forward passes the hooks act in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookScope {
    /// The prompts (prefill) and every new token.
    All,
    /// The new tokens only: the prompts run unhooked.
    NewTokens,
}

/// Token id put in padding slots; never attended, so any id in the vocabulary does.
const PAD: i64 = 0;

/// Checks prompts and settings before any work: at least one prompt, none empty or longer
/// than the context, at least one new token, sampling settings in range.
pub fn check(model: &Model, prompts: &[Vec<u32>], cfg: &GenerateConfig) -> Result<()> {
    let bad = |m: String| Err(ModelError::Config(m));
    if prompts.is_empty() {
        return bad("no prompt to continue".into());
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return bad(format!("prompt {} is empty", i + 1));
    }
    let ctx = model.ctx_len();
    if let Some(i) = prompts.iter().position(|p| p.len() >= ctx) {
        return bad(format!(
            "prompt {} is {} tokens: it leaves no room in the model's context of {ctx}",
            i + 1,
            prompts[i].len()
        ));
    }
    let vocab = model.vocab_size() as u32;
    if let Some(&t) = prompts.iter().flatten().find(|&&t| t >= vocab) {
        return bad(format!("token id {t} is outside the vocabulary of {vocab}"));
    }
    if cfg.max_new_tokens == 0 {
        return bad("max new tokens is 0: nothing to generate".into());
    }
    cfg.sampling.check().map_err(ModelError::Config)
}

/// Continues each prompt (token ids) under `hooks`. `observe` sees, before each token is
/// chosen, the step number and the next-token logits [prompts, vocab] (rows of prompts that
/// have ended included; their values are not meaningful).
///
/// A captured hook holds every position computed, [prompts, columns, ...]: the left-padded
/// prompts (unless `scope` is [`HookScope::NewTokens`]), then one column per token fed back.
/// Row i's real values are its prompt's last `prompts[i].len()` prompt columns and its first
/// `token_ids.len() - 1` new columns (the last token chosen is never fed back); the other
/// columns hold padding, whose values mean nothing. Attention patterns keep the last pass only.
pub fn generate(
    model: &Model,
    prompts: &[Vec<u32>],
    cfg: &GenerateConfig,
    hooks: &mut Hooks,
    scope: HookScope,
    observe: &mut dyn FnMut(usize, &Tensor),
) -> Result<Vec<Continuation>> {
    check(model, prompts, cfg)?;
    let n = prompts.len();
    let device = model.device();
    let ctx = model.ctx_len();
    let (ids, valid) = left_padded(prompts, device);
    let mut cache = KvCache::new(model.n_layers(), n, device);
    cache.begin(&valid, ctx)?;
    let mut unhooked = Hooks::new();
    let prefill_hooks = match scope {
        HookScope::All => &mut *hooks,
        HookScope::NewTokens => &mut unhooked,
    };
    let width = ids.size()[1];
    let mut last = model
        .forward_cached(&ids, prefill_hooks, &mut cache)?
        .select(1, width - 1);
    let mut trajectory = Trajectory::new(hooks);
    trajectory.collect(hooks);
    let mut sampler = Sampler::new(cfg.sampling, n);
    let mut out: Vec<Continuation> = (0..n)
        .map(|_| Continuation {
            token_ids: Vec::new(),
            stop: StopReason::MaxTokens,
        })
        .collect();
    let mut live = vec![true; n];
    for step in 0..cfg.max_new_tokens {
        observe(step, &last);
        let rows = Vec::<Vec<f32>>::try_from(last.to_kind(Kind::Float).to_device(Device::Cpu))?;
        for i in 0..n {
            if !live[i] {
                continue;
            }
            let token = sampler.pick(i, &rows[i]);
            let c = &mut out[i];
            c.token_ids.push(token);
            if cfg.stop.contains(&token) {
                (live[i], c.stop) = (false, StopReason::StopToken);
            } else if c.token_ids.len() == cfg.max_new_tokens {
                (live[i], c.stop) = (false, StopReason::MaxTokens);
            } else if prompts[i].len() + c.token_ids.len() >= ctx {
                (live[i], c.stop) = (false, StopReason::Context);
            }
        }
        if !live.contains(&true) {
            break;
        }
        // Rows that ended are fed padding, which nothing attends and which takes no position.
        let next: Vec<i64> = (0..n)
            .map(|i| match (live[i], out[i].token_ids.last()) {
                (true, Some(&t)) => t as i64,
                _ => PAD,
            })
            .collect();
        let step_valid = Tensor::from_slice(&live).view([n as i64, 1]);
        cache.begin(&step_valid, ctx)?;
        let next = Tensor::from_slice(&next)
            .view([n as i64, 1])
            .to_device(device);
        last = model.forward_cached(&next, hooks, &mut cache)?.select(1, 0);
        trajectory.collect(hooks);
    }
    trajectory.hand_back(hooks);
    Ok(out)
}

/// Each captured hook's values, pass by pass, to be joined along the positions at the end.
struct Trajectory(Vec<(HookPoint, Vec<Tensor>)>);

impl Trajectory {
    fn new(hooks: &Hooks) -> Trajectory {
        Trajectory(hooks.captures().into_iter().map(|p| (p, vec![])).collect())
    }

    /// Moves the last pass's captures out of `hooks`.
    fn collect(&mut self, hooks: &mut Hooks) {
        for (point, passes) in &mut self.0 {
            passes.extend(hooks.take(*point));
        }
    }

    fn hand_back(self, hooks: &mut Hooks) {
        for (point, passes) in self.0 {
            if !passes.is_empty() {
                hooks.put_captured(point, Tensor::cat(&passes, 1));
            }
        }
    }
}

/// Prompts as one batch [n, longest], padding first, and which slots are real tokens.
pub fn left_padded(prompts: &[Vec<u32>], device: Device) -> (Tensor, Tensor) {
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * width);
    let mut valid = Vec::with_capacity(prompts.len() * width);
    for p in prompts {
        let pad = width - p.len();
        ids.extend(std::iter::repeat_n(PAD, pad).chain(p.iter().map(|&t| t as i64)));
        valid.extend((0..width).map(|j| j >= pad));
    }
    let shape = [prompts.len() as i64, width as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&valid).view(shape),
    )
}

/// How text prompts become token ids.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromptStyle {
    /// Render each prompt as a user turn through the model's chat template, ready for the
    /// assistant's answer.
    pub chat: bool,
    /// With `chat`: a system turn first.
    pub system: Option<String>,
    /// Put BOS first (plain prompts): `None` follows the model file, and adds BOS when the
    /// file does not say. A chat template places its own.
    pub bos: Option<bool>,
}

/// A text prompt and its continuation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TextContinuation {
    /// The prompt as given.
    pub prompt: String,
    /// The ids the model read (after the chat template, with BOS if any).
    pub prompt_token_ids: Vec<u32>,
    /// The new ids, a stop token included.
    pub token_ids: Vec<u32>,
    /// The new text, without a final stop token.
    pub text: String,
    /// Why it ended.
    pub stop: StopReason,
}

/// The token ids of a text prompt in `style`.
pub fn prompt_ids(model: &TextModel, prompt: &str, style: &PromptStyle) -> Result<Vec<u32>> {
    if prompt.trim().is_empty() {
        return Err(ModelError::Config("the prompt is empty".into()));
    }
    if !style.chat {
        let bos = style
            .bos
            .or(model.tokenizer.add_bos)
            .unwrap_or(model.tokenizer.bos.is_some());
        return model.prompt_ids(prompt, bos);
    }
    let mut messages: Vec<Message> = style
        .system
        .iter()
        .map(|s| Message::new("system", s))
        .collect();
    messages.push(Message::new("user", prompt));
    let text = model.tokenizer.chat()?.render(&messages, true)?;
    Ok(model.tokenizer.encode(&text)?)
}

/// Continues text prompts: each rendered in `style`, generated under `hooks` (see
/// [`generate`]), stopped also at the model's EOS, and decoded.
pub fn continue_texts(
    model: &TextModel,
    prompts: &[String],
    style: &PromptStyle,
    cfg: &GenerateConfig,
    hooks: &mut Hooks,
    scope: HookScope,
) -> Result<Vec<TextContinuation>> {
    let ids = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            prompt_ids(model, p, style).map_err(|e| match e {
                ModelError::Config(m) => ModelError::Config(format!("prompt {}: {m}", i + 1)),
                other => other,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut cfg = cfg.clone();
    cfg.stop.extend(model.tokenizer.eos);
    let out = generate(&model.model, &ids, &cfg, hooks, scope, &mut |_, _| {})?;
    prompts
        .iter()
        .zip(ids)
        .zip(out)
        .map(|((prompt, prompt_token_ids), c)| {
            let shown = match c.stop {
                StopReason::StopToken => &c.token_ids[..c.token_ids.len() - 1],
                _ => &c.token_ids[..],
            };
            Ok(TextContinuation {
                prompt: prompt.clone(),
                prompt_token_ids,
                text: model.tokenizer.decode(shown)?,
                token_ids: c.token_ids,
                stop: c.stop,
            })
        })
        .collect()
}
