//! The bundled model as an explainer: SmolLM2-135M-Instruct (or any chat model saescope
//! opens) answering through saescope's own generation loop and the model's chat template, so
//! `explain` and `score` run with no server and no network. Its answer is begun for it, by a
//! final assistant message or else with the explanation's prefix (`EXPLANATION:` written after
//! the assistant header), which a small model would otherwise often leave out, and ends with
//! that line. Asked for log-probabilities, it gives each answer token's most likely
//! alternatives, as a server does. A 135M-parameter model explains
//! poorly; a server with a large model is the way to good explanations.

use crate::client::{ChatReply, ChatRequest, TokenLogprob};
use crate::explain::Explainer;
use crate::prompt::EXPLANATION_PREFIX;
use crate::wire::Message;
use saescope_activations::generate::{
    GenerateConfig, HookScope, PromptStyle, StopReason, generate, prompt_ids,
};
use saescope_activations::hooks::Hooks;
use saescope_activations::model::TextModel;
use saescope_activations::sampler::Sampling;
use std::path::PathBuf;

/// A model saescope runs itself, answering greedily, a few requests at a time.
pub struct LocalExplainer {
    /// The model.
    pub model: TextModel,
    /// Its file, for the record.
    pub path: PathBuf,
    /// Requests generated together as one batch (default 4).
    pub batch: usize,
}

impl Explainer for LocalExplainer {
    fn name(&self) -> String {
        format!("local {}", self.path.display())
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::json!({ "model": self.path, "batch": self.batch, "sampling": "greedy" })
    }

    fn answer(
        &self,
        requests: &[ChatRequest],
        done: &(dyn Fn(usize) + Sync),
    ) -> Vec<Result<ChatReply, String>> {
        // Requests that share a system message and a begun answer are generated together (the
        // scorers mix several), in the order asked within each kind.
        let mut kinds: Vec<(Option<Kind<'_>>, Vec<usize>)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let key = parts(&r.messages).map(|(system, _, begun)| (system, begun));
            match kinds.iter_mut().find(|k| k.0 == key) {
                Some(k) => k.1.push(i),
                None => kinds.push((key, vec![i])),
            }
        }
        let mut out: Vec<Option<Result<ChatReply, String>>> = vec![None; requests.len()];
        let mut answered = 0;
        for (_, members) in kinds {
            for group in members.chunks(self.batch.max(1)) {
                let batch: Vec<ChatRequest> = group.iter().map(|&i| requests[i].clone()).collect();
                for (&i, reply) in group.iter().zip(self.batch_answer(&batch)) {
                    out[i] = Some(reply);
                }
                answered += group.len();
                done(answered);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every request answered"))
            .collect()
    }
}

impl LocalExplainer {
    /// One batch: requests of a user message, a system message before it and a begun answer
    /// (an assistant message) after it optional, as the explainer and the scorers write them;
    /// each answers with its own continuation, or all with the same error.
    fn batch_answer(&self, group: &[ChatRequest]) -> Vec<Result<ChatReply, String>> {
        let mut users = Vec::with_capacity(group.len());
        let mut shared = None;
        for r in group {
            let Some((system, user, begun)) = parts(&r.messages) else {
                let e = "the local model takes a user message, with a system message before it \
                         and a begun answer after it optional"
                    .to_owned();
                return group.iter().map(|_| Err(e.clone())).collect();
            };
            if users.is_empty() {
                shared = Some((system, begun));
            } else if shared != Some((system, begun)) {
                // Requests of one batch share the system message and the begun answer; the
                // explainer's and each scorer's always do.
                return group.iter().map(|r| self.one(r)).collect();
            }
            users.push(user.clone());
        }
        let Some((system, begun)) = shared else {
            return Vec::new();
        };
        let style = PromptStyle {
            chat: true,
            system: system.cloned(),
            bos: None,
        };
        let fail = |e: &dyn std::fmt::Display| group.iter().map(|_| Err(e.to_string())).collect();
        // An answer is one line (an explanation, a list): it stops at the line's end too, where
        // a small model would otherwise run on repeating itself.
        let newline = match self.model.tokenizer.encode("\n") {
            Ok(ids) if ids.len() == 1 => ids,
            Ok(_) => Vec::new(),
            Err(e) => return fail(&e),
        };
        let cfg = GenerateConfig {
            max_new_tokens: group.iter().map(|r| r.max_tokens).max().unwrap_or(1).max(1),
            sampling: Sampling::default(),
            stop: self
                .model
                .tokenizer
                .eos
                .into_iter()
                .chain(newline)
                .collect(),
        };
        // The answer starts with the begun text already written after the chat template's
        // assistant header, so that a small model goes straight to it.
        let prefix = match self.model.tokenizer.encode(begun) {
            Ok(p) => p,
            Err(e) => return fail(&e),
        };
        let mut prompts = Vec::with_capacity(users.len());
        for u in &users {
            match prompt_ids(&self.model, u, &style) {
                Ok(mut ids) => {
                    ids.extend(&prefix);
                    prompts.push(ids);
                }
                Err(e) => return fail(&e),
            }
        }
        let top = group
            .iter()
            .filter_map(|r| r.top_logprobs)
            .max()
            .unwrap_or(0);
        let mut steps: Vec<Tops> = Vec::new();
        let mut observe = |_: usize, logits: &tch::Tensor| {
            if top > 0 {
                steps.push(tops(logits, top));
            }
        };
        let out = match generate(
            &self.model.model,
            &prompts,
            &cfg,
            &mut Hooks::new(),
            HookScope::All,
            &mut observe,
        ) {
            Ok(o) => o,
            Err(e) => return fail(&e),
        };
        out.into_iter()
            .enumerate()
            .map(|(i, c)| {
                let shown = match c.stop {
                    StopReason::StopToken => &c.token_ids[..c.token_ids.len() - 1],
                    _ => &c.token_ids[..],
                };
                let decode =
                    |ids: &[u32]| self.model.tokenizer.decode(ids).map_err(|e| e.to_string());
                let text = decode(shown)?;
                let mut tokens = Vec::new();
                if group[i].top_logprobs.is_some() {
                    for (step, &id) in shown.iter().enumerate() {
                        let Some(alts) = steps.get(step).and_then(|s| s.get(i)) else {
                            // Log-probabilities could not be read off this step: none at all.
                            tokens.clear();
                            break;
                        };
                        let mut top = Vec::with_capacity(alts.len());
                        for &(alt, lp) in alts {
                            top.push((decode(&[alt])?, lp));
                        }
                        tokens.push(TokenLogprob {
                            token: decode(&[id])?,
                            logprob: alts.iter().find(|a| a.0 == id).map_or(f64::NAN, |a| a.1),
                            top,
                        });
                    }
                }
                Ok(ChatReply {
                    text: format!("{begun}{text}"),
                    finish_reason: Some(format!("{:?}", c.stop).to_lowercase()),
                    tokens,
                })
            })
            .collect()
    }

    fn one(&self, r: &ChatRequest) -> Result<ChatReply, String> {
        self.batch_answer(std::slice::from_ref(r))
            .pop()
            .expect("one answer")
    }
}

/// A request's system message, user message and begun answer ([`EXPLANATION_PREFIX`] when it
/// has none), when it has that shape.
fn parts(messages: &[Message]) -> Option<(Option<&String>, &String, &str)> {
    let (system, rest) = match messages.split_first()? {
        (s, rest) if s.role == "system" => (Some(&s.content), rest),
        _ => (None, messages),
    };
    match rest {
        [u] if u.role == "user" => Some((system, &u.content, EXPLANATION_PREFIX)),
        [u, a] if u.role == "user" && a.role == "assistant" => {
            Some((system, &u.content, a.content.as_str()))
        }
        _ => None,
    }
}

/// What requests generated together share: the system message and the begun answer.
type Kind<'a> = (Option<&'a String>, &'a str);

/// One step's most likely next tokens for each row, with their log-probabilities.
type Tops = Vec<Vec<(u32, f64)>>;

fn tops(logits: &tch::Tensor, k: usize) -> Tops {
    let lp = logits
        .to_kind(tch::Kind::Float)
        .log_softmax(-1, tch::Kind::Float);
    let (values, ids) = lp.topk(k as i64, -1, true, true);
    let values = Vec::<Vec<f32>>::try_from(values.to_device(tch::Device::Cpu)).unwrap_or_default();
    let ids = Vec::<Vec<i64>>::try_from(ids.to_device(tch::Device::Cpu)).unwrap_or_default();
    values
        .iter()
        .zip(&ids)
        .map(|(v, i)| {
            i.iter()
                .zip(v)
                .map(|(&t, &p)| (t as u32, f64::from(p)))
                .collect()
        })
        .collect()
}
