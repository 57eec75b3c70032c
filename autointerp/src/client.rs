//! A blocking client for any OpenAI-compatible chat server (OpenAI, vLLM, llama.cpp's server):
//! the explainer's and the scorers' way to a large model.
//!
//! What a long explain run needs from it: a limit on requests in flight, a timeout, retries
//! with doubling waits on 429, 5xx, refused connections and timeouts (a server's own
//! `Retry-After` wins), and a response cache keyed by the request, so a rerun or a resumed run
//! asks nothing twice. The API key is read from an environment variable when the client is
//! made, sent only in the `Authorization` header, and never logged, cached or put in an error.

use crate::error::ClientError;
use crate::wire::{ChatAnswer, ChatBody, Message};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Where the server is and how to talk to it. Serialisable, so that a run can record its
/// explainer's settings (the key itself is never part of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// The API's base URL, up to and including its version: `http://127.0.0.1:8080/v1`,
    /// `https://api.openai.com/v1`. Required.
    pub base_url: String,
    /// The model name the server expects. Required.
    pub model: String,
    /// The environment variable that holds the API key (default `OPENAI_API_KEY`). When it is
    /// unset or empty, requests carry no `Authorization` header (local servers need none).
    pub api_key_env: String,
    /// Seconds one attempt may take, connecting and reading included (default 120).
    pub timeout_s: f64,
    /// Attempts after the first one fails in a way worth repeating (default 4).
    pub retries: u32,
    /// Seconds before the first retry, doubled before each further one (default 1).
    pub backoff_s: f64,
    /// Requests in flight at once in [`Client::chat_all`] (default 4).
    pub concurrency: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            base_url: String::new(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            timeout_s: 120.0,
            retries: 4,
            backoff_s: 1.0,
            concurrency: 4,
        }
    }
}

/// One chat request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// The most tokens the answer may have.
    pub max_tokens: usize,
    /// 0 for greedy.
    pub temperature: f64,
    /// A sampling seed, for servers that take one.
    pub seed: Option<u64>,
    /// Ask for this many alternatives with log-probabilities at each answer token.
    pub top_logprobs: Option<usize>,
}

/// A server's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    /// The answer's text.
    pub text: String,
    /// Why the server stopped (`stop`, `length`), when it says.
    pub finish_reason: Option<String>,
    /// Each answer token with its log-probability and the alternatives asked for; empty when
    /// none were asked for or the server gives none.
    pub tokens: Vec<TokenLogprob>,
}

/// An answer token and its log-probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f64,
    /// The most likely tokens at its position, most likely first.
    pub top: Vec<(String, f64)>,
}

/// The client. Shareable across threads; [`Client::chat_all`] runs its own.
pub struct Client {
    cfg: ServerConfig,
    key: Option<String>,
    agent: ureq::Agent,
    cache: Option<PathBuf>,
    attempts: AtomicU64,
    cache_hits: AtomicU64,
}

impl std::fmt::Debug for Client {
    // By hand, so that the key can never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cfg", &self.cfg)
            .field("key", &self.key.as_ref().map(|_| "(set)"))
            .field("cache", &self.cache)
            .finish()
    }
}

impl Client {
    /// A client for `cfg`, caching answers as files in `cache` when given.
    pub fn new(cfg: ServerConfig, cache: Option<PathBuf>) -> Result<Client, ClientError> {
        if cfg.base_url.trim().is_empty() {
            return Err(ClientError::Config("no server URL (base_url)".into()));
        }
        if !(cfg.base_url.starts_with("http://") || cfg.base_url.starts_with("https://")) {
            return Err(ClientError::Config(format!(
                "server URL {:?}: expected http:// or https://",
                cfg.base_url
            )));
        }
        if cfg.model.trim().is_empty() {
            return Err(ClientError::Config("no model name for the server".into()));
        }
        let timeout_ok = cfg.timeout_s.is_finite() && cfg.timeout_s > 0.0;
        let backoff_ok = cfg.backoff_s.is_finite() && cfg.backoff_s >= 0.0;
        if !timeout_ok || cfg.concurrency == 0 || !backoff_ok {
            return Err(ClientError::Config(format!(
                "timeout {} s, concurrency {}, backoff {} s: the timeout and concurrency must be positive, the backoff not negative",
                cfg.timeout_s, cfg.concurrency, cfg.backoff_s
            )));
        }
        if let Some(dir) = &cache {
            std::fs::create_dir_all(dir).map_err(|e| ClientError::Cache {
                path: dir.clone(),
                message: e.to_string(),
            })?;
        }
        let key = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            cfg,
            key,
            agent,
            cache,
            attempts: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    /// The settings, for the run's record.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// HTTP attempts made so far (retries included; cache hits make none).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Requests answered from the cache so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// Asks one question: from the cache when it was asked before, else from the server.
    pub fn chat(&self, req: &ChatRequest) -> Result<ChatReply, ClientError> {
        let body = ChatBody {
            model: &self.cfg.model,
            messages: &req.messages,
            max_tokens: req.max_tokens,
            temperature: req.temperature,
            seed: req.seed,
            logprobs: req.top_logprobs.is_some(),
            top_logprobs: req.top_logprobs,
        };
        let json = serde_json::to_string(&body).expect("a request serialises");
        let cached = self.cache.as_deref().map(|d| cache_file(d, &json));
        if let Some(path) = &cached
            && let Some(reply) = read_cached(path)
        {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(reply);
        }
        let reply = self.ask(&json)?;
        if let Some(path) = &cached {
            write_cached(path, &json, &reply)?;
        }
        Ok(reply)
    }

    /// Asks every question, `concurrency` at a time, calling `done` with the number answered
    /// (or failed) so far after each. Answers come back in the order asked.
    pub fn chat_all(
        &self,
        reqs: &[ChatRequest],
        done: &(dyn Fn(usize) + Sync),
    ) -> Vec<Result<ChatReply, ClientError>> {
        let next = AtomicUsize::new(0);
        let finished = AtomicUsize::new(0);
        let out: Mutex<Vec<Option<Result<ChatReply, ClientError>>>> =
            Mutex::new((0..reqs.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..self.cfg.concurrency.min(reqs.len()) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(req) = reqs.get(i) else { break };
                        let r = self.chat(req);
                        out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                        done(finished.fetch_add(1, Ordering::Relaxed) + 1);
                    }
                });
            }
        });
        out.into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .map(|r| r.expect("every request was answered"))
            .collect()
    }

    /// Sends a request body until it is answered, or fails in a way not worth repeating, or
    /// the retries are spent.
    fn ask(&self, json: &str) -> Result<ChatReply, ClientError> {
        let url = format!(
            "{}/chat/completions",
            self.cfg.base_url.trim_end_matches('/')
        );
        let mut wait = self.cfg.backoff_s;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let failure = match self.attempt(&url, json) {
                Ok(reply) => return Ok(reply),
                Err(f) => f,
            };
            let retry_after = match &failure {
                Failure::Retry { after, .. } => *after,
                Failure::Final(_) => None,
            };
            if attempt > self.cfg.retries || matches!(failure, Failure::Final(_)) {
                return Err(failure.into_error(attempt));
            }
            let pause = retry_after.unwrap_or(wait).min(60.0);
            tracing::debug!("{url}: attempt {attempt} failed; retrying in {pause:.1} s");
            std::thread::sleep(Duration::from_secs_f64(pause));
            wait *= 2.0;
        }
    }

    /// A failure of the connection itself (sending, or reading the answer), worth a retry: a
    /// timeout as such, anything else as unreachable, its message after `doing`.
    fn transport(&self, url: &str, e: ureq::Error, doing: &str) -> Failure {
        let error = match e {
            ureq::Error::Timeout(_) => ClientError::Timeout {
                url: url.to_owned(),
                seconds: self.cfg.timeout_s,
                attempts: 0,
            },
            e => ClientError::Unreachable {
                url: url.to_owned(),
                message: format!("{doing}{e}"),
                attempts: 0,
            },
        };
        Failure::Retry { error, after: None }
    }

    /// One HTTP attempt.
    fn attempt(&self, url: &str, json: &str) -> Result<ChatReply, Failure> {
        let mut req = self
            .agent
            .post(url)
            .header("Content-Type", "application/json");
        if let Some(key) = &self.key {
            req = req.header("Authorization", &format!("Bearer {key}"));
        }
        let mut resp = req.send(json).map_err(|e| self.transport(url, e, ""))?;
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok());
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport(url, e, "reading the answer: "))?;
        if status != 200 {
            let error = ClientError::Status {
                url: url.to_owned(),
                status,
                body: clip(&text),
                attempts: 0,
            };
            return Err(if status == 429 || status >= 500 {
                Failure::Retry { error, after }
            } else {
                Failure::Final(error)
            });
        }
        parse_reply(&text).map_err(|message| {
            Failure::Final(ClientError::Malformed {
                url: url.to_owned(),
                message,
                raw: text.clone(),
            })
        })
    }
}

/// Why an attempt failed, and whether another may succeed.
enum Failure {
    Retry {
        error: ClientError,
        /// The server's `Retry-After`, in seconds.
        after: Option<f64>,
    },
    Final(ClientError),
}

impl Failure {
    /// The error to report after `attempts` attempts.
    fn into_error(self, attempts: u32) -> ClientError {
        let mut e = match self {
            Failure::Retry { error, .. } | Failure::Final(error) => error,
        };
        match &mut e {
            ClientError::Timeout { attempts: a, .. }
            | ClientError::Unreachable { attempts: a, .. }
            | ClientError::Status { attempts: a, .. } => *a = attempts,
            _ => {}
        }
        e
    }
}

/// A successful answer's text and log-probabilities, or what is wrong with it.
fn parse_reply(text: &str) -> Result<ChatReply, String> {
    let answer: ChatAnswer = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let choice = answer
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| "the answer has no choices".to_owned())?;
    let tokens = choice
        .logprobs
        .and_then(|l| l.content)
        .unwrap_or_default()
        .into_iter()
        .map(|t| TokenLogprob {
            token: t.token,
            logprob: t.logprob,
            top: t
                .top_logprobs
                .into_iter()
                .map(|a| (a.token, a.logprob))
                .collect(),
        })
        .collect();
    Ok(ChatReply {
        text: choice.message.content.unwrap_or_default(),
        finish_reason: choice.finish_reason,
        tokens,
    })
}

/// At most 500 characters of a body, for an error message.
fn clip(text: &str) -> String {
    match text.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// The cache file of a request body: its SHA-256 (the body names the model).
fn cache_file(dir: &Path, body: &str) -> PathBuf {
    let hash = Sha256::digest(body.as_bytes());
    dir.join(format!("{}.json", hex::encode(hash)))
}

/// A cached answer; anything unreadable counts as not cached and is asked again.
fn read_cached(path: &Path) -> Option<ChatReply> {
    let bytes = std::fs::read(path).ok()?;
    let entry: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    serde_json::from_value(entry.get("reply")?.clone()).ok()
}

/// Writes the request and its answer under a temporary name, then renames it into place.
fn write_cached(path: &Path, body: &str, reply: &ChatReply) -> Result<(), ClientError> {
    let entry = serde_json::json!({
        "request": serde_json::from_str::<serde_json::Value>(body).expect("the body is JSON"),
        "reply": reply,
    });
    let fail = |e: std::io::Error| ClientError::Cache {
        path: path.to_owned(),
        message: e.to_string(),
    };
    // Unique per process and write, so that two threads caching the same answer do not meet.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("json.{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(&entry).expect("JSON")).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
