//! `saescope explain`: explains latents from their example windows (`saescope examples`) with
//! the bundled model or any OpenAI-compatible server, into `DICT/explanations.parquet`.

use super::examples::parse_latents;
use crate::progress::Tracker;
use anyhow::{Result, bail};
use saescope_activations::assets;
use saescope_activations::model::{Compute, TextModel, device};
use saescope_analysis::{Session, SessionSpec};
use saescope_autointerp::explain::{ExplainConfig, Explainer, explain};
use saescope_autointerp::local::LocalExplainer;
use saescope_autointerp::{Client, ServerConfig};
use saescope_store::examples::read_examples;
use saescope_store::explanations::read_explanations;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The dictionary's directory, with its example sets (`saescope examples`).
    #[arg(long)]
    pub dict: PathBuf,
    /// The harvest run (default: found from the dictionary).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Latents to explain: `A..B` or `3,17,42` (default: every latent with examples).
    #[arg(long)]
    pub latents: Option<String>,
    /// An OpenAI-compatible server's base URL (e.g. http://127.0.0.1:8080/v1); without it the
    /// bundled model explains.
    #[arg(long, requires = "model")]
    pub server: Option<String>,
    /// The model name the server expects.
    #[arg(long, requires = "server")]
    pub model: Option<String>,
    /// The environment variable holding the server's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Requests to the server in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds a server request may take.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Without --server: this model file explains instead of the bundled SmolLM2-135M-Instruct.
    #[arg(long, conflicts_with = "server")]
    pub local_model: Option<PathBuf>,
    /// Activating windows shown per latent (default: 40 to a server, 10 to the local model).
    #[arg(long)]
    pub examples: Option<usize>,
    /// Show silent windows as counterexamples too (hard negatives first).
    #[arg(long)]
    pub contrastive: bool,
    /// Leave out the per-token activation lines.
    #[arg(long)]
    pub no_activations: bool,
    /// Keep explanations already there and ask only for the rest.
    #[arg(long)]
    pub resume: bool,
    /// cpu or cuda (the local model and the token texts).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: Args) -> Result<()> {
    let spec = SessionSpec {
        run: a.run.clone(),
        device: device(&a.device)?,
        ..SessionSpec::new(&a.dict)
    };
    let session = Session::open(&spec)?;
    let dir = &session.opened.dir;
    let path = dir.examples();
    if !path.exists() {
        bail!(
            "{}: no example sets yet; draw them first with `saescope examples --dict {}`",
            path.display(),
            a.dict.display()
        );
    }
    let examples = read_examples(&path)?;
    let latents: Vec<u32> = match &a.latents {
        Some(spec) => parse_latents(spec)?,
        None => examples
            .iter()
            .map(|r| r.latent)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let mut cfg = ExplainConfig::default();
    cfg.prompt.contrastive = a.contrastive;
    cfg.prompt.activations = !a.no_activations;
    let explainer: Box<dyn Explainer> = match (&a.server, &a.model) {
        (Some(url), Some(model)) => {
            cfg.prompt.max_examples = a.examples.unwrap_or(40);
            let server = ServerConfig {
                base_url: url.clone(),
                model: model.clone(),
                api_key_env: a.api_key_env.clone(),
                timeout_s: a.timeout,
                concurrency: a.concurrency,
                ..ServerConfig::default()
            };
            Box::new(Client::new(server, Some(dir.explanations().join("cache")))?)
        }
        _ => {
            cfg.prompt.max_examples = a.examples.unwrap_or(10);
            let path = a.local_model.clone().unwrap_or_else(assets::default_model);
            println!(
                "explaining with {} on this machine: a small model explains poorly; --server URL --model NAME uses any OpenAI-compatible server",
                path.display()
            );
            Box::new(LocalExplainer {
                model: TextModel::open(&path, spec.device, Compute::F32)?,
                path,
                batch: 4,
            })
        }
    };
    explain_and_print(
        &session,
        &examples,
        &latents,
        explainer.as_ref(),
        &cfg,
        a.resume,
    )?;
    Ok(())
}

/// Explains `latents` of the session's dictionary from `examples` with a progress bar, then
/// prints what happened and the first explanations (the demo's too).
pub fn explain_and_print(
    session: &Session,
    examples: &[saescope_store::examples::ExampleRow],
    latents: &[u32],
    explainer: &dyn Explainer,
    cfg: &ExplainConfig,
    resume: bool,
) -> Result<()> {
    let dir = &session.opened.dir;
    let tokenizer = &session.model.tokenizer;
    let texts = Mutex::new(HashMap::<u32, String>::new());
    let token_text = |id: u32| -> String {
        let mut t = texts.lock().unwrap_or_else(|e| e.into_inner());
        t.entry(id)
            .or_insert_with(|| tokenizer.decode(&[id]).unwrap_or_default())
            .clone()
    };
    let table = dir.explanations_table();
    let bar = Mutex::new(Tracker::new("explaining", "latents"));
    let report = explain(
        examples,
        latents,
        &token_text,
        explainer,
        cfg,
        resume,
        &table,
        &|done, total, _failed| {
            bar.lock()
                .unwrap_or_else(|e| e.into_inner())
                .update(done as u64, total as u64)
        },
    )?;
    bar.into_inner().unwrap_or_else(|e| e.into_inner()).finish();
    println!(
        "explained {} latents, {} without an explanation (their answers are kept in the `raw` column){}; written to {}",
        report.explained,
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
        .filter(|r| asked.contains(&r.latent))
        .take(8)
    {
        match &r.explanation {
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
