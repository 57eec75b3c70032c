//! The bundled model as an explainer: SmolLM2-135M-Instruct (or any chat model saescope
//! opens) answering through saescope's own generation loop and the model's chat template, so
//! `explain` runs with no server and no network. Its answer is begun for it with the
//! explanation's prefix (`EXPLANATION:` written after the assistant header), which a small model
//! would otherwise often leave out, and ends with that line. A 135M-parameter model explains
//! poorly; a server with a large model is the way to good explanations.

use crate::client::{ChatReply, ChatRequest};
use crate::explain::Explainer;
use crate::prompt::EXPLANATION_PREFIX;
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
        let mut out = Vec::with_capacity(requests.len());
        for group in requests.chunks(self.batch.max(1)) {
            out.extend(self.batch_answer(group));
            done(out.len());
        }
        out
    }
}

impl LocalExplainer {
    /// One batch: requests of one system message and one user message each, as the explainer
    /// writes them; each answers with its own continuation, or all with the same error.
    fn batch_answer(&self, group: &[ChatRequest]) -> Vec<Result<ChatReply, String>> {
        let mut users = Vec::with_capacity(group.len());
        let mut system = None;
        for r in group {
            let (sys, user) = match r.messages.as_slice() {
                [s, u] if s.role == "system" && u.role == "user" => (Some(&s.content), &u.content),
                [u] if u.role == "user" => (None, &u.content),
                _ => {
                    let e = "the local explainer takes a system and a user message".to_owned();
                    return group.iter().map(|_| Err(e.clone())).collect();
                }
            };
            if users.is_empty() {
                system = sys;
            } else if system != sys {
                // Requests of one batch share the system message; the explainer's always do.
                return group.iter().map(|r| self.one(r)).collect();
            }
            users.push(user.clone());
        }
        let style = PromptStyle {
            chat: true,
            system: system.cloned(),
            bos: None,
        };
        let fail = |e: &dyn std::fmt::Display| group.iter().map(|_| Err(e.to_string())).collect();
        // The explanation is the rest of the begun line: the answer stops at its end too, where
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
        // The answer starts with the explanation's prefix already written after the chat
        // template's assistant header, so that a small model goes straight to it.
        let prefix = match self.model.tokenizer.encode(EXPLANATION_PREFIX) {
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
        let out = match generate(
            &self.model.model,
            &prompts,
            &cfg,
            &mut Hooks::new(),
            HookScope::All,
            &mut |_, _| {},
        ) {
            Ok(o) => o,
            Err(e) => return fail(&e),
        };
        out.into_iter()
            .map(|c| {
                let shown = match c.stop {
                    StopReason::StopToken => &c.token_ids[..c.token_ids.len() - 1],
                    _ => &c.token_ids[..],
                };
                let text = self
                    .model
                    .tokenizer
                    .decode(shown)
                    .map_err(|e| e.to_string())?;
                Ok(ChatReply {
                    text: format!("{EXPLANATION_PREFIX}{text}"),
                    finish_reason: Some(format!("{:?}", c.stop).to_lowercase()),
                    tokens: vec![],
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
