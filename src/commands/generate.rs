//! `saescope generate`: continue prompts with a model, greedily or by sampling, as plain text or
//! through the model's chat template.

use anyhow::{Result, bail};
use saescope_activations::assets;
use saescope_activations::generate::{
    GenerateConfig, HookScope, PromptStyle, StopReason, continue_texts,
};
use saescope_activations::hooks::Hooks;
use saescope_activations::model::{TextModel, device};
use saescope_activations::sampler::Sampling;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The prompts to continue (generated together as one batch).
    #[arg(required = true)]
    pub prompts: Vec<String>,
    /// A GGUF file or a Hugging Face checkpoint directory (default: the bundled SmolLM2-135M).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// New tokens per prompt at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities sum to p only.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Seed of the samples: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also stop at this token (repeatable; each must be one token, e.g. "." or "<|im_end|>");
    /// the model's EOS always stops.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Send each prompt as a user turn through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system turn before each prompt.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Plain prompts: do not put BOS first (default: as the model file says, else BOS first).
    #[arg(long)]
    pub no_bos: bool,
    /// Where the model runs: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The dtype the model computes in: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub compute_dtype: String,
    /// Print one JSON object per prompt (prompt, prompt_token_ids, token_ids, text, stop).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.max_new_tokens == 0 {
        bail!("--max-new-tokens 0: nothing to generate");
    }
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    if let Err(m) = sampling.check() {
        bail!("{m}");
    }
    let style = PromptStyle {
        chat: a.chat,
        system: a.system.clone(),
        bos: a.no_bos.then_some(false),
    };
    let path = a.model.clone().unwrap_or_else(assets::default_model);
    let model = TextModel::open(&path, device(&a.device)?, a.compute_dtype.parse()?)?;
    let stop = a
        .stop
        .iter()
        .map(|s| model.tokenizer.one_token(s))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = GenerateConfig {
        max_new_tokens: a.max_new_tokens,
        sampling,
        stop,
    };
    let out = continue_texts(
        &model,
        &a.prompts,
        &style,
        &cfg,
        &mut Hooks::new(),
        HookScope::All,
    )?;
    for c in &out {
        if a.json {
            println!("{}", serde_json::to_string(c)?);
            continue;
        }
        let end = match c.stop {
            StopReason::StopToken => "",
            StopReason::MaxTokens => " [max new tokens]",
            StopReason::Context => " [context full]",
        };
        println!("> {}\n{}{end}\n", c.prompt, c.text);
    }
    Ok(())
}
