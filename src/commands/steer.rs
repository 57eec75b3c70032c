//! `saescope steer`: generate with a dictionary's features pushed on, clean and steered side by
//! side, with the KL of each generated step and the shift of the feature's promoted tokens.

use super::dict;
use anyhow::{Context, Result, bail};
use saescope_activations::generate::{GenerateConfig, PromptStyle};
use saescope_activations::sampler::Sampling;
use saescope_analysis::Session;
use saescope_analysis::steer::{Push, SteerReport, SteerRequest, Steering, promoted_tokens, steer};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("push").required(true).args(["add", "clamp", "target_kl"])))]
pub struct Args {
    /// The prompts to continue.
    #[arg(required = true)]
    pub prompts: Vec<String>,
    #[command(flatten)]
    pub source: dict::DictArgs,
    /// The features to push, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub feature: Vec<u32>,
    /// Add S times each feature's contribution at its largest activation in the feature store
    /// (with --raw: S unit decoder directions, in the hook's units).
    #[arg(long, allow_negative_numbers = true)]
    pub add: Option<f64>,
    /// Set each feature's activation to V, keeping the dictionary's reconstruction error.
    #[arg(long, allow_negative_numbers = true)]
    pub clamp: Option<f64>,
    /// Add at the strength whose mean KL over the prompt's next-token distributions is K nats.
    #[arg(long)]
    pub target_kl: Option<f64>,
    /// --add and --target-kl in the hook's raw units, without the feature store.
    #[arg(long)]
    pub raw: bool,
    /// Push only on generated tokens, not on the prompt.
    #[arg(long)]
    pub only_new: bool,
    /// New tokens per continuation at most.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Continuations per prompt (each clean and steered pair shares a seed).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample among the most likely tokens whose probabilities sum to p only.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send each prompt as a user turn through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Promoted tokens reported.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print one JSON object per prompt.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.max_new_tokens == 0 {
        bail!("--max-new-tokens 0: nothing to generate");
    }
    if let Some(p) = a.prompts.iter().position(|p| p.trim().is_empty()) {
        bail!("prompt {} is empty", p + 1);
    }
    let sampling = Sampling {
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        ..Sampling::default()
    };
    if let Err(m) = sampling.check() {
        bail!("{m}");
    }
    let session = Session::open(&a.source.spec()?)?;
    let store = session.feature_rows().with_context(|| {
        format!(
            "reading the feature store in {}",
            session.opened.dir.features().display()
        )
    })?;
    let steering = Steering::new(&session, &a.feature, store.as_deref(), a.raw)?;
    let push = match (a.add, a.clamp) {
        (Some(s), _) => Push::Add(s),
        (_, Some(v)) => Push::Clamp(v),
        _ => Push::Add(0.0), // replaced by the strength found for --target-kl
    };
    let request = SteerRequest {
        style: PromptStyle {
            chat: a.chat,
            ..PromptStyle::default()
        },
        generate: GenerateConfig {
            max_new_tokens: a.max_new_tokens,
            sampling,
            stop: vec![],
        },
        samples: a.samples,
        only_new: a.only_new,
    };
    let promoted = promoted_tokens(&session, a.feature[0], store.as_deref(), a.top)?;
    let reports = steer(
        &session,
        &steering,
        &a.prompts,
        push,
        a.target_kl,
        &request,
        &promoted,
    )?;
    for r in &reports {
        if a.json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            print_report(r);
        }
    }
    Ok(())
}

/// Prints a report as the command does: clean and steered text, step KLs, promoted tokens.
pub(crate) fn print_report(r: &SteerReport) {
    let push = match r.push {
        Push::Add(s) => format!("add {s:.3}"),
        Push::Clamp(v) => format!("clamp to {v}"),
    };
    let target = r
        .target_kl
        .map(|k| format!(" (for a mean KL of {k} nats over the prompt)"))
        .unwrap_or_default();
    println!(
        "> {}\nfeatures {:?}, {push}{target}{}",
        r.prompt,
        r.features,
        if r.only_new { ", new tokens only" } else { "" }
    );
    for (i, (c, s)) in r.clean.iter().zip(&r.steered).enumerate() {
        let kl = &r.kl_per_step[i];
        let mean = kl.iter().sum::<f64>() / kl.len().max(1) as f64;
        println!("  clean:   {:?}", c.text);
        println!(
            "  steered: {:?}  (KL per step: mean {mean:.3}, max {:.3})",
            s.text,
            kl.iter().copied().fold(0.0, f64::max)
        );
    }
    let shifts: Vec<String> = r
        .promoted
        .iter()
        .map(|t| format!("{:?} {:+.2}", t.token, t.steered - t.clean))
        .collect();
    println!(
        "  promoted tokens, change in log-probability: {}\n",
        shifts.join("  ")
    );
}
