//! `saescope train`: fit a dictionary to one hook of a harvest run.

use crate::progress;
use anyhow::Result;
use saescope_activations::model::device;
use saescope_sae::Method;
use saescope_sae::metrics::Metrics;
use saescope_sae::train::{Observer, RunTraining, TrainConfig};
use saescope_store::DictDir;
use saescope_store::dictionary::LogLine;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Harvest run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Hook point to train on, e.g. blocks.6.hook_resid_post or blocks.3.attn.hook_z.
    #[arg(long)]
    pub hook: String,
    /// Output directory for the dictionary (default: RUN/dictionaries/HOOK-METHOD).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// TOML file with any TrainConfig fields; flags given on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// topk, batchtopk, mpsae, gba or snmf.
    #[arg(long)]
    pub method: Option<String>,
    /// Number of latents (default 8 x the hook's width).
    #[arg(long)]
    pub latents: Option<usize>,
    /// Active latents per token (pursuit steps for mpsae).
    #[arg(long)]
    pub k: Option<usize>,
    /// Training tokens (default: one pass over the training shards).
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Tokens per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (default 2e-4 / sqrt(latents / 2^14)).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,
}

/// Training's progress bar: tokens, with FVU, L0 and the dead fraction as its message.
pub struct Bar(indicatif::ProgressBar, usize);

impl Bar {
    pub fn new() -> Bar {
        Bar(indicatif::ProgressBar::hidden(), 1)
    }

    pub fn finish(self) {
        self.0.finish_and_clear();
    }
}

impl Observer for Bar {
    fn start(&mut self, total: u64, batch: usize) {
        self.0 = progress::bar(total * batch as u64, "training", "tokens");
        self.1 = batch;
    }
    fn step(&mut self, step: u64, line: Option<&LogLine>) {
        self.0.set_position(step * self.1 as u64);
        let Some(l) = line else { return };
        if l.fvu.is_nan() {
            self.0.set_message(format!("loss {:.4}", l.loss));
        } else {
            self.0.set_message(format!(
                "fvu {:.3} L0 {:.1} dead {:.2}",
                l.fvu, l.l0, l.dead_fraction
            ));
        }
    }
}

/// Trains and returns the dictionary's directory.
pub fn run(a: Args) -> Result<DictDir> {
    let mut cfg: TrainConfig = super::toml_config(a.config.as_deref(), "training config")?;
    if let Some(m) = &a.method {
        cfg.method = m.parse::<Method>()?;
    }
    cfg.latents = a.latents.unwrap_or(cfg.latents);
    cfg.k = a.k.unwrap_or(cfg.k);
    cfg.tokens = a.tokens.unwrap_or(cfg.tokens);
    cfg.batch_tokens = a.batch_size.unwrap_or(cfg.batch_tokens);
    cfg.lr = a.lr.or(cfg.lr);
    cfg.seed = a.seed.unwrap_or(cfg.seed);
    train(&RunTraining {
        run: &a.run,
        hook: &a.hook,
        config: &cfg,
        out: a.out.as_deref(),
        resume: a.resume,
        device: device(&a.device)?,
    })
}

/// Trains with a progress bar and prints the held-out metrics (the demo's training too).
pub fn train(job: &RunTraining<'_>) -> Result<DictDir> {
    let mut bar = Bar::new();
    let (out, report) = job.train(&mut bar)?;
    bar.finish();
    println!(
        "trained {} on {} ({} steps, {} tokens) into {}",
        job.config.method.name(),
        job.hook,
        report.steps,
        report.tokens,
        out.path().display()
    );
    if let Some(mt) = &report.metrics {
        print_metrics(mt);
    }
    Ok(out)
}

/// The held-out metrics in one line, then any warnings about them.
pub fn print_metrics(mt: &Metrics) {
    println!(
        "held-out ({} tokens): FVU {:.4}  explained variance {:.4} (legacy {:.4})  L0 {:.2}  cos {:.4}  dead {:.3}  dense {:.3}",
        mt.tokens,
        mt.fvu,
        mt.explained_variance,
        mt.explained_variance_legacy,
        mt.l0,
        mt.cos_sim,
        mt.dead_fraction,
        mt.dense_fraction
    );
    for w in &mt.warnings {
        println!("  note: {w}");
    }
}
