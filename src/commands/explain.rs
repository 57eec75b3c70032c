//! `saescope explain`: explains latents from their example windows (`saescope examples`) with
//! the bundled model or any OpenAI-compatible server, into `DICT/explanations.parquet`.

use super::examples::{parse_latents, sample_latents};
use crate::progress::RequestTracker;
use anyhow::{Context, Result, bail};
use saescope_activations::assets;
use saescope_activations::model::{Compute, TextModel, device};
use saescope_analysis::effects::EffectsConfig;
use saescope_analysis::{Session, SessionSpec};
use saescope_autointerp::explain::{ExplainConfig, Explainer, Prompts, WindowPrompts, explain};
use saescope_autointerp::local::LocalExplainer;
use saescope_autointerp::output::EffectPrompts;
use saescope_autointerp::prompt::PromptConfig;
use saescope_autointerp::{ChatReply, ChatRequest, Client, ServerConfig};
use saescope_store::examples::{ExampleKind, ExampleRow, read_examples};
use saescope_store::explanations::{Evidence, read_explanations};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub target: DictArgs,
    #[command(flatten)]
    pub select: Select,
    #[command(flatten)]
    pub explainer: ExplainerArgs,
    /// Explain what each latent makes the model write when pushed on (the next tokens it makes
    /// likelier at the end of texts) instead of where it fires; kept beside the input-side
    /// explanation.
    #[arg(long)]
    pub output_side: bool,
    /// With --output-side: the mean KL (nats) between clean and pushed next-token
    /// distributions that sets each latent's push strength.
    #[arg(long, default_value_t = EffectsConfig::default().target_kl, requires = "output_side")]
    pub target_kl: f64,
    /// Keep explanations already there and ask only for the rest.
    #[arg(long)]
    pub resume: bool,
}

/// Tokens the bundled model may answer with.
pub const LOCAL_MAX_TOKENS: usize = 32;

/// Who answers: a server or a model on this machine (shared by explain, score and the
/// explorer's explain button).
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// An OpenAI-compatible server's base URL (e.g. http://127.0.0.1:8080/v1); without it the
    /// bundled model answers.
    #[arg(long, requires = "model")]
    pub server: Option<String>,
    /// The model name the server expects.
    #[arg(long, requires = "server")]
    pub model: Option<String>,
    /// The environment variable holding the server's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Begin the server's answer for it (`EXPLANATION:` when explaining, `[` when scoring) as a
    /// final assistant message, which llama.cpp's and vLLM's servers continue and OpenAI's API
    /// does not, so a small model goes straight to the answer.
    #[arg(long, requires = "server")]
    pub prefill: bool,
    /// Requests to the server in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds a server request may take.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Without --server: this model file answers instead of the bundled SmolLM2-135M-Instruct.
    #[arg(long, conflicts_with = "server")]
    pub local_model: Option<PathBuf>,
}

impl Default for ModelArgs {
    fn default() -> Self {
        ModelArgs {
            server: None,
            model: None,
            api_key_env: "OPENAI_API_KEY".into(),
            prefill: false,
            concurrency: 4,
            timeout: 120.0,
            local_model: None,
        }
    }
}

impl ModelArgs {
    /// Whether the model runs on this machine.
    pub fn is_local(&self) -> bool {
        self.server.is_none()
    }

    /// The model that answers; server answers are cached in `cache`.
    pub fn open(&self, cache: PathBuf, device: tch::Device) -> Result<AnyModel> {
        Ok(match (&self.server, &self.model) {
            (Some(url), Some(model)) => {
                let server = ServerConfig {
                    base_url: url.clone(),
                    model: model.clone(),
                    api_key_env: self.api_key_env.clone(),
                    timeout_s: self.timeout,
                    concurrency: self.concurrency,
                    ..ServerConfig::default()
                };
                AnyModel::Server(Box::new(Client::new(server, Some(cache))?))
            }
            _ => AnyModel::Local(Box::new(open_local(self.local_model.clone(), device)?)),
        })
    }

    /// Who answers, in words.
    pub fn describe(&self) -> String {
        match (&self.server, &self.model) {
            (Some(url), Some(model)) => format!("{model} at {url}"),
            _ => match &self.local_model {
                Some(p) => format!("{} on this machine", p.display()),
                None => "the bundled SmolLM2-135M-Instruct on this machine".into(),
            },
        }
    }

    /// Says, when the model is a small local one, that a server is the way to good answers.
    pub fn warn_if_local(&self, doing: &str, does: &str) {
        if self.is_local() {
            println!(
                "{doing} with {}: a small model {does} poorly; --server URL --model NAME uses any OpenAI-compatible server",
                self.describe()
            );
        }
    }
}

/// A model on this machine that answers and reads: `path`, else the bundled
/// SmolLM2-135M-Instruct, in f32, four requests a batch.
pub fn open_local(path: Option<PathBuf>, device: tch::Device) -> Result<LocalExplainer> {
    let path = path.unwrap_or_else(assets::default_model);
    Ok(LocalExplainer {
        model: TextModel::open(&path, device, Compute::F32)?,
        path,
        batch: 4,
    })
}

/// The model that answers: a server, or a model on this machine, which can also read prompts
/// teacher-forced (the scorers that need log-probabilities of a prompt use that). Both are
/// boxed: they differ in size by kilobytes.
pub enum AnyModel {
    /// An OpenAI-compatible server.
    Server(Box<Client>),
    /// A model saescope runs itself.
    Local(Box<LocalExplainer>),
}

impl AnyModel {
    /// The model on this machine, when it is one.
    pub fn local(&self) -> Option<&LocalExplainer> {
        match self {
            AnyModel::Local(l) => Some(l.as_ref()),
            AnyModel::Server(_) => None,
        }
    }

    fn inner(&self) -> &dyn Explainer {
        match self {
            AnyModel::Server(c) => c.as_ref(),
            AnyModel::Local(l) => l.as_ref(),
        }
    }
}

impl Explainer for AnyModel {
    fn name(&self) -> String {
        self.inner().name()
    }
    fn settings(&self) -> serde_json::Value {
        self.inner().settings()
    }
    fn answer(
        &self,
        requests: &[ChatRequest],
        done: &(dyn Fn(usize) + Sync),
    ) -> Vec<Result<ChatReply, String>> {
        self.inner().answer(requests, done)
    }
}

/// Who explains, and how the prompt is made (shared with the explorer's explain button).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ExplainerArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Activating windows shown per latent (default: 40 to a server, 10 to the local model).
    #[arg(long)]
    pub examples: Option<usize>,
    /// Show silent windows as counterexamples too (hard negatives first).
    #[arg(long)]
    pub contrastive: bool,
    /// Leave out the per-token activation lines.
    #[arg(long)]
    pub no_activations: bool,
}

impl ExplainerArgs {
    /// The explainer and the settings it explains with; server answers are cached in `cache`.
    pub fn build(
        &self,
        cache: PathBuf,
        device: tch::Device,
    ) -> Result<(AnyModel, ExplainConfig, PromptConfig)> {
        let mut cfg = ExplainConfig::default();
        let mut prompt = PromptConfig {
            contrastive: self.contrastive,
            activations: !self.no_activations,
            ..PromptConfig::default()
        };
        if self.model.is_local() {
            prompt.max_examples = self.examples.unwrap_or(10);
            // An explanation is a phrase; past that a small model only repeats itself.
            cfg.max_tokens = LOCAL_MAX_TOKENS;
        } else {
            prompt.max_examples = self.examples.unwrap_or(40);
            cfg.prefill = self.model.prefill;
        }
        Ok((self.model.open(cache, device)?, cfg, prompt))
    }

    /// Who explains, in words.
    pub fn describe(&self) -> String {
        self.model.describe()
    }
}

/// The dictionary an autointerp command works on (explain, score, autointerp).
#[derive(clap::Args, Debug)]
pub struct DictArgs {
    /// The dictionary's directory, with its example sets (`saescope examples`).
    #[arg(long)]
    pub dict: PathBuf,
    /// The harvest run (default: found from the dictionary).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// cpu or cuda (the local model and the token texts).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DictArgs {
    /// The session on the dictionary, its run and its model.
    pub fn open(&self) -> Result<Session> {
        let spec = SessionSpec {
            run: self.run.clone(),
            device: device(&self.device)?,
            ..SessionSpec::new(&self.dict)
        };
        Ok(Session::open(&spec)?)
    }
}

/// Which latents to work on.
#[derive(clap::Args, Debug)]
pub struct Select {
    /// Latents: `A..B` or `3,17,42` (default: every latent there is work for: with examples to
    /// explain, with an explanation to score).
    #[arg(long, conflicts_with = "sample")]
    pub latents: Option<String>,
    /// This many latents chosen at random (with --seed) from those there is work for.
    #[arg(long)]
    pub sample: Option<usize>,
    /// Seed of --sample (and, when scoring, of the windows' order and wrong marks, and of the
    /// shuffled control).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Select {
    /// The latents asked for among `pool`, the latents there is work for (`of` says where they
    /// come from, for the error when --sample asks for more).
    pub fn choose(&self, pool: Vec<u32>, of: impl FnOnce(usize) -> String) -> Result<Vec<u32>> {
        Ok(match (&self.latents, self.sample) {
            (Some(spec), _) => parse_latents(spec)?,
            (None, Some(k)) => {
                sample_latents(&pool, k, self.seed).with_context(|| of(pool.len()))?
            }
            (None, None) => pool,
        })
    }
}

/// The session's example sets, or an error that says how to draw them when there are none.
pub fn example_sets(session: &Session) -> Result<Vec<ExampleRow>> {
    let path = session.opened.dir.examples();
    if !path.exists() {
        bail!(
            "{}: no example sets yet; draw them first with `saescope examples --dict {}`",
            path.display(),
            session.opened.dir.path().display()
        );
    }
    Ok(read_examples(&path)?)
}

/// The session's example sets (an error that says how to draw them when there are none), and
/// the latents `select` asks for among those drawn.
pub fn examples_and_latents(
    session: &Session,
    select: &Select,
) -> Result<(Vec<ExampleRow>, Vec<u32>)> {
    let examples = example_sets(session)?;
    let path = session.opened.dir.examples();
    let drawn: Vec<u32> = examples
        .iter()
        .filter(|r| r.kind == ExampleKind::Activating)
        .map(|r| r.latent)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let latents = select.choose(drawn, |n| {
        format!("{} holds examples of {n} latents", path.display())
    })?;
    Ok((examples, latents))
}

pub fn run(a: Args) -> Result<()> {
    let session = a.target.open()?;
    let dir = &session.opened.dir;
    let (examples, latents) = examples_and_latents(&session, &a.select)?;
    a.explainer.model.warn_if_local("explaining", "explains");
    if a.output_side && !(a.target_kl > 0.0 && a.target_kl.is_finite()) {
        bail!(
            "--target-kl {}: must be a positive number of nats",
            a.target_kl
        );
    }
    let (explainer, cfg, prompt) = a
        .explainer
        .build(dir.explanations().join("cache"), session.device)?;
    let token_text = token_texts(&session);
    let mut windows;
    let mut pushed;
    let source: &mut dyn Prompts = if a.output_side {
        let effects = EffectsConfig {
            target_kl: a.target_kl,
            ..EffectsConfig::default()
        };
        pushed = EffectPrompts::new(&session, &examples, session.feature_rows()?, effects);
        &mut pushed
    } else {
        windows = WindowPrompts::new(&examples, &token_text, prompt);
        &mut windows
    };
    explain_and_print(&session, source, &latents, &explainer, &cfg, a.resume)?;
    // A dictionary on object storage gets what was written beside it there.
    session.opened.publish()?;
    Ok(())
}

/// Each token's text by the session's tokenizer, decoded once.
pub fn token_texts(session: &Session) -> impl Fn(u32) -> String + '_ {
    let texts = Mutex::new(HashMap::<u32, String>::new());
    move |id: u32| -> String {
        let mut t = texts.lock().unwrap_or_else(|e| e.into_inner());
        t.entry(id)
            .or_insert_with(|| session.model.tokenizer.decode(&[id]).unwrap_or_default())
            .clone()
    }
}

/// Explains `latents` of the session's dictionary from `examples` with a progress bar, then
/// prints what happened and the first explanations (the demo's too).
pub fn explain_and_print(
    session: &Session,
    source: &mut dyn Prompts,
    latents: &[u32],
    explainer: &dyn Explainer,
    cfg: &ExplainConfig,
    resume: bool,
) -> Result<()> {
    let dir = &session.opened.dir;
    let evidence = source.evidence();
    let table = dir.explanations_table();
    let bar = RequestTracker::new("explaining", "latents", "failed");
    let report = explain(
        source,
        latents,
        explainer,
        cfg,
        resume,
        &table,
        &|done, total, failed| bar.update(done, total, failed),
    )?;
    bar.finish();
    println!(
        "explained {} latents from their {}, {} without an explanation (their answers are kept in the `raw` column){}; written to {}",
        report.explained,
        match evidence {
            Evidence::Activations => "activating windows",
            Evidence::Effects => "effects when pushed",
        },
        report.failed,
        if report.kept > 0 {
            format!(", {} kept from before", report.kept)
        } else {
            String::new()
        },
        table.display()
    );
    if !report.without_examples.is_empty() {
        let shown: Vec<String> = report
            .without_examples
            .iter()
            .take(10)
            .map(|f| f.to_string())
            .collect();
        println!(
            "  {} latents have no activating windows in {} (too few to draw, or not drawn): {}{}",
            report.without_examples.len(),
            dir.examples().display(),
            shown.join(", "),
            if report.without_examples.len() > 10 {
                ", …"
            } else {
                ""
            }
        );
    }
    let asked: BTreeSet<u32> = latents.iter().copied().collect();
    for r in read_explanations(&table)?
        .iter()
        .filter(|r| r.evidence == evidence && asked.contains(&r.latent))
        .take(8)
    {
        match &r.explanation {
            // A small model can run on for hundreds of words; the table keeps them all.
            Some(e) if e.chars().count() > 200 => println!(
                "  {:>6}  {}… ({} characters)",
                r.latent,
                e.chars().take(200).collect::<String>(),
                e.chars().count()
            ),
            Some(e) => println!("  {:>6}  {e}", r.latent),
            None => println!(
                "  {:>6}  (no explanation; answer: {:?})",
                r.latent,
                r.raw.chars().take(200).collect::<String>()
            ),
        }
    }
    Ok(())
}
