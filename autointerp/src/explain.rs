//! Explaining latents: each latent's evidence becomes a prompt ([`Prompts`]: its train windows
//! from `examples.parquet` through [`crate::prompt`], or what it does when pushed through
//! [`crate::output`]), an explainer answers it, and the parsed explanation, or the counted
//! failure with the raw answer, goes into `explanations.parquet` under that evidence.
//!
//! The table is rewritten after every chunk of latents, so a killed run loses at most the chunk
//! in flight; with `resume`, latents that already have an explanation are not asked again.

use crate::client::{ChatReply, ChatRequest, Client};
use crate::prompt::{
    EXPLANATION_PREFIX, PromptConfig, Window, explainer_messages, parse_explanation,
};
use crate::wire::Message;
use saescope_store::examples::{ExampleKind, ExampleRow, ExampleSet};
use saescope_store::explanations::{
    Evidence, ExplanationRow, read_explanations, write_explanations,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Whatever answers chat requests: a server through [`Client`], or the bundled model.
pub trait Explainer {
    /// Who answers, for the record: `server <URL> <model>`, `local <model>`.
    fn name(&self) -> String;
    /// The settings that shape the answers, for the record (no secrets).
    fn settings(&self) -> serde_json::Value;
    /// Answers every request, in order, calling `done` with the count answered after each;
    /// an error is the reason that request got no answer.
    fn answer(
        &self,
        requests: &[ChatRequest],
        done: &(dyn Fn(usize) + Sync),
    ) -> Vec<Result<ChatReply, String>>;
}

impl Explainer for Client {
    fn name(&self) -> String {
        format!("server {} {}", self.config().base_url, self.config().model)
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self.config()).expect("the server settings serialise")
    }
    fn answer(
        &self,
        requests: &[ChatRequest],
        done: &(dyn Fn(usize) + Sync),
    ) -> Vec<Result<ChatReply, String>> {
        self.chat_all(requests, done)
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }
}

/// Where a latent's prompt comes from.
pub trait Prompts {
    /// What the prompts show, which keys the explanations in the table.
    fn evidence(&self) -> Evidence;
    /// The settings that shape the prompts, for the record.
    fn settings(&self) -> serde_json::Value;
    /// Whether `latent` has what its prompt needs.
    fn has(&self, latent: u32) -> bool;
    /// The messages asking about `latent` and the number of examples they show; an error is
    /// why no prompt could be made, recorded as a failed attempt.
    fn messages(&mut self, latent: u32) -> Result<(Vec<Message>, usize), String>;
}

/// Prompts from each latent's activating train windows (and silent ones, contrastive).
pub struct WindowPrompts<'a> {
    windows: TrainWindows<'a>,
    token_text: &'a dyn Fn(u32) -> String,
    cfg: PromptConfig,
}

impl<'a> WindowPrompts<'a> {
    /// Prompts from `examples`, naming tokens with `token_text`.
    pub fn new(
        examples: &'a [ExampleRow],
        token_text: &'a dyn Fn(u32) -> String,
        cfg: PromptConfig,
    ) -> WindowPrompts<'a> {
        WindowPrompts {
            windows: train_windows(examples),
            token_text,
            cfg,
        }
    }
}

impl Prompts for WindowPrompts<'_> {
    fn evidence(&self) -> Evidence {
        Evidence::Activations
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("the prompt settings serialise")
    }
    fn has(&self, latent: u32) -> bool {
        self.windows
            .get(&latent)
            .is_some_and(|(active, _)| !active.is_empty())
    }
    fn messages(&mut self, latent: u32) -> Result<(Vec<Message>, usize), String> {
        let (active, silent) = self
            .windows
            .get(&latent)
            .ok_or_else(|| format!("latent {latent} has no train windows"))?;
        let text = |rs: &[&ExampleRow]| -> Vec<Window> {
            rs.iter().map(|r| window(r, self.token_text)).collect()
        };
        let windows = text(active);
        let shown = windows.len().min(self.cfg.max_examples);
        Ok((
            explainer_messages(&windows, &text(silent), &self.cfg),
            shown,
        ))
    }
}

/// How explaining runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplainConfig {
    /// Tokens an answer may have (default 200).
    pub max_tokens: usize,
    /// Latents asked between two saves of the table (default 16).
    pub chunk: usize,
    /// Begin each answer with `EXPLANATION:` as a final assistant message, which servers such
    /// as llama.cpp's continue, so a small model goes straight to the explanation (default
    /// false: OpenAI's API answers such a message instead of continuing it). Not for the local
    /// explainer, which always begins its answer so.
    pub prefill: bool,
}

impl Default for ExplainConfig {
    fn default() -> Self {
        ExplainConfig {
            max_tokens: 200,
            chunk: 16,
            prefill: false,
        }
    }
}

/// What a run of `explain` did.
#[derive(Debug, Default, PartialEq)]
pub struct ExplainReport {
    /// Latents explained in this run.
    pub explained: usize,
    /// Latents whose answer gave no explanation in this run.
    pub failed: usize,
    /// Latents skipped because they already had an explanation (`resume`).
    pub kept: usize,
    /// Latents asked for that have no activating train windows in the examples (skipped by
    /// `saescope examples`, or never drawn).
    pub without_examples: Vec<u32>,
}

/// Explains `latents` from the prompts of `source` and keeps the table at `table` up to date;
/// `progress` gets (latents done, latents to do, failures so far).
#[allow(clippy::too_many_arguments)]
pub fn explain(
    source: &mut dyn Prompts,
    latents: &[u32],
    explainer: &dyn Explainer,
    cfg: &ExplainConfig,
    resume: bool,
    table: &Path,
    progress: &(dyn Fn(usize, usize, usize) + Sync),
) -> Result<ExplainReport, saescope_store::StoreError> {
    let evidence = source.evidence();
    let mut rows: BTreeMap<(u32, Evidence), ExplanationRow> = read_explanations(table)?
        .into_iter()
        .map(|r| ((r.latent, r.evidence), r))
        .collect();
    let mut report = ExplainReport::default();
    let mut todo = Vec::new();
    for &f in latents {
        if resume
            && rows
                .get(&(f, evidence))
                .is_some_and(|r| r.explanation.is_some())
        {
            report.kept += 1;
        } else if !source.has(f) {
            report.without_examples.push(f);
        } else {
            todo.push(f);
        }
    }
    let settings = serde_json::json!({
        "explainer": explainer.settings(),
        "explain": cfg,
        "evidence": evidence.name(),
        "prompt": source.settings(),
    })
    .to_string();
    let name = explainer.name();
    let mut failures = 0;
    for (c, chunk) in todo.chunks(cfg.chunk.max(1)).enumerate() {
        let base = c * cfg.chunk.max(1);
        let outcomes = ask(source, chunk, explainer, cfg, &|n| {
            progress(base + n, todo.len(), failures)
        });
        for o in outcomes {
            let before = rows.get(&(o.latent, evidence)).map_or(0, |r| r.failures);
            if o.explanation.is_some() {
                report.explained += 1;
            } else {
                report.failed += 1;
                failures += 1;
            }
            rows.insert(
                (o.latent, evidence),
                ExplanationRow {
                    latent: o.latent,
                    evidence,
                    failures: before + u32::from(o.explanation.is_none()),
                    explanation: o.explanation,
                    explainer: name.clone(),
                    settings: settings.clone(),
                    prompt_hash: o.prompt_hash,
                    examples: o.shown as u32,
                    raw: o.raw,
                },
            );
        }
        let all: Vec<ExplanationRow> = rows.values().cloned().collect();
        write_explanations(table, &all)?;
        progress(base + chunk.len(), todo.len(), failures);
    }
    Ok(report)
}

/// What asking about one latent gave.
struct Outcome {
    latent: u32,
    explanation: Option<String>,
    raw: String,
    prompt_hash: String,
    shown: usize,
}

/// Asks `explainer` about each latent of `chunk` whose prompt could be made; a latent without
/// one, or without an answer, or whose answer has no explanation, is a failure with the reason
/// kept as its raw text.
fn ask(
    source: &mut dyn Prompts,
    chunk: &[u32],
    explainer: &dyn Explainer,
    cfg: &ExplainConfig,
    done: &(dyn Fn(usize) + Sync),
) -> Vec<Outcome> {
    let mut asked = Vec::with_capacity(chunk.len());
    let mut out = Vec::new();
    for &f in chunk {
        match source.messages(f) {
            Ok((mut messages, shown)) => {
                if cfg.prefill {
                    messages.push(Message::new("assistant", EXPLANATION_PREFIX));
                }
                asked.push((f, messages, shown));
            }
            Err(e) => out.push(Outcome {
                latent: f,
                explanation: None,
                raw: format!("no prompt: {e}"),
                prompt_hash: String::new(),
                shown: 0,
            }),
        }
    }
    let requests: Vec<ChatRequest> = asked
        .iter()
        .map(|(_, messages, _)| ChatRequest {
            messages: messages.clone(),
            max_tokens: cfg.max_tokens,
            temperature: 0.0,
            seed: None,
            top_logprobs: None,
        })
        .collect();
    let answers = explainer.answer(&requests, done);
    for ((f, messages, shown), answer) in asked.into_iter().zip(answers) {
        let (explanation, raw) = match answer {
            Ok(reply) => {
                let text = if cfg.prefill && !reply.text.starts_with(EXPLANATION_PREFIX) {
                    format!("{EXPLANATION_PREFIX}{}", reply.text)
                } else {
                    reply.text
                };
                (parse_explanation(&text), text)
            }
            Err(e) => (None, format!("no answer: {e}")),
        };
        out.push(Outcome {
            latent: f,
            explanation,
            raw,
            prompt_hash: hash(&messages),
            shown,
        });
    }
    out
}

/// Each latent's train windows: activating ones strongest first, and silent ones (hard
/// negatives first).
pub type TrainWindows<'a> = BTreeMap<u32, (Vec<&'a ExampleRow>, Vec<&'a ExampleRow>)>;

/// Groups `examples`' train windows by latent, activating ones strongest first and silent ones
/// hard negatives first.
pub fn train_windows(examples: &[ExampleRow]) -> TrainWindows<'_> {
    let mut out: TrainWindows<'_> = BTreeMap::new();
    for r in examples.iter().filter(|r| r.set == ExampleSet::Train) {
        let e = out.entry(r.latent).or_default();
        match r.kind {
            ExampleKind::Activating => e.0.push(r),
            ExampleKind::Neighbour | ExampleKind::Random => e.1.push(r),
        }
    }
    for (active, silent) in out.values_mut() {
        active.sort_by(|a, b| {
            b.max_act()
                .total_cmp(&a.max_act())
                .then(a.start.cmp(&b.start))
        });
        silent.sort_by_key(|r| (r.kind != ExampleKind::Neighbour, r.start));
    }
    out
}

fn window(r: &ExampleRow, token_text: &dyn Fn(u32) -> String) -> Window {
    Window {
        tokens: r.token_ids.iter().map(|&t| token_text(t)).collect(),
        acts: r.acts.clone(),
    }
}

fn hash(messages: &[Message]) -> String {
    let json = serde_json::to_string(messages).expect("messages serialise");
    hex::encode(Sha256::digest(json.as_bytes()))
}
