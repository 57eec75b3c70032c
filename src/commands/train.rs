//! `saescope train`: fit a dictionary to one hook of a harvest run, or several dictionaries
//! straight from the model's forward passes.

use crate::progress;
use anyhow::{Result, bail};
use saescope_activations::corpus::CorpusSource;
use saescope_activations::hooks::HookPoint;
use saescope_activations::model::{TextModel, device};
use saescope_analysis::stream::{StreamJob, StreamTraining};
use saescope_sae::Method;
use saescope_sae::metrics::Metrics;
use saescope_sae::train::{Observer, RunTraining, TrainConfig};
use saescope_store::DictDir;
use saescope_store::dictionary::LogLine;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Harvest run directory.
    #[arg(long, required_unless_present = "model")]
    pub run: Option<PathBuf>,
    /// Hook point to train on, e.g. blocks.6.hook_resid_post or blocks.3.attn.hook_z. With
    /// --model, several (comma-separated), one dictionary each.
    #[arg(long, value_delimiter = ',', required = true)]
    pub hook: Vec<String>,
    /// Output directory for the dictionary (default: RUN/dictionaries/HOOK-METHOD). With
    /// --model, the directory that holds one dictionary per hook and size
    /// (OUT/HOOK-METHOD, with -LATENTS when --latents is given).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train straight from this model (GGUF file or checkpoint directory) over --corpus, with no
    /// activations on disk: one forward pass feeds every dictionary. Needs --tokens and --out.
    #[arg(long, conflicts_with_all = ["run", "resume", "if_incomplete"])]
    pub model: Option<PathBuf>,
    /// With --model: `brown` or `shakespeare` (bundled), a directory of .txt files, a .jsonl
    /// file, or a .parquet file or directory.
    #[arg(long, default_value = "brown", requires = "model")]
    pub corpus: String,
    /// With --model: the text field of JSONL records, or the text column of Parquet files.
    #[arg(long, default_value = "text", requires = "model")]
    pub text_column: String,
    /// With --model: tokens per context, BOS included.
    #[arg(long, default_value_t = 128, requires = "model")]
    pub ctx_len: usize,
    /// With --model: contexts per forward pass.
    #[arg(long, default_value_t = 16, requires = "model")]
    pub contexts_per_batch: usize,
    /// With --model: rows of each hook held out after the training text, for the metrics.
    #[arg(long, default_value_t = 16_384, requires = "model")]
    pub heldout_tokens: u64,
    /// With --model: the dtype the model computes in (f32 or bf16).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"], requires = "model")]
    pub compute_dtype: String,
    /// TOML file with any TrainConfig fields; flags given on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// topk, batchtopk, mpsae, gba or snmf.
    #[arg(long)]
    pub method: Option<String>,
    /// Number of latents (default 8 x the hook's width). With --model, several
    /// (comma-separated): a dictionary of each size at each hook.
    #[arg(long, value_delimiter = ',')]
    pub latents: Vec<usize>,
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
    /// Do only what is left: nothing when the output directory holds a finished dictionary,
    /// continue its checkpoint when it has one, else start (what `saescope slurm train`'s tasks
    /// run, so a re-submitted array skips finished work).
    #[arg(long, conflicts_with = "resume")]
    pub if_incomplete: bool,
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

/// Trains and returns the dictionary's directory (the first, when training from the model).
pub fn run(a: Args) -> Result<DictDir> {
    if a.model.is_some() {
        return from_model(&a);
    }
    let (Some(run), [hook]) = (&a.run, a.hook.as_slice()) else {
        bail!(
            "training on a run takes one --hook; to train several at once, train from the model (--model)"
        );
    };
    if a.latents.len() > 1 {
        bail!(
            "training on a run takes one --latents; to train several sizes at once, train from the model (--model) or use `saescope slurm train`"
        );
    }
    let cfg = config(&a)?;
    let mut job = RunTraining {
        run,
        hook,
        config: &cfg,
        out: a.out.as_deref(),
        resume: a.resume,
        device: device(&a.device)?,
    };
    if a.if_incomplete {
        let out = job.out();
        let (finished, checkpoint) = out.training_state()?;
        if finished {
            println!(
                "{} already holds a trained dictionary: nothing to do",
                out.path().display()
            );
            return Ok(out);
        }
        job.resume = checkpoint;
    }
    train(&job)
}

/// The training settings the arguments ask for: the TOML file's, then the flags'.
pub fn config(a: &Args) -> Result<TrainConfig> {
    let mut cfg: TrainConfig = super::toml_config(a.config.as_deref(), "training config")?;
    if let Some(m) = &a.method {
        cfg.method = m.parse::<Method>()?;
    }
    cfg.latents = a.latents.first().copied().unwrap_or(cfg.latents);
    cfg.k = a.k.unwrap_or(cfg.k);
    cfg.tokens = a.tokens.unwrap_or(cfg.tokens);
    cfg.batch_tokens = a.batch_size.unwrap_or(cfg.batch_tokens);
    cfg.lr = a.lr.or(cfg.lr);
    cfg.seed = a.seed.unwrap_or(cfg.seed);
    Ok(cfg)
}

/// Trains a dictionary for each hook and size from one stream of forward passes.
fn from_model(a: &Args) -> Result<DictDir> {
    let (Some(model_path), Some(out)) = (&a.model, &a.out) else {
        bail!("training from the model needs --out: the directory its dictionaries go in");
    };
    let device = device(&a.device)?;
    let model = TextModel::open(model_path, device, a.compute_dtype.parse()?)?;
    let corpus = CorpusSource::parse(&a.corpus, &a.text_column)?;
    let hooks = HookPoint::parse_list(&a.hook, model.model.n_layers())?;
    let base = config(a)?;
    let sizes: Vec<Option<usize>> = match a.latents.as_slice() {
        [] => vec![None],
        given => given.iter().copied().map(Some).collect(),
    };
    let mut jobs = Vec::new();
    for hook in &hooks {
        for &size in &sizes {
            let mut config = base.clone();
            let mut name = format!("{hook}-{}", base.method.name());
            if let Some(n) = size {
                config.latents = n;
                name.push_str(&format!("-{n}"));
            }
            jobs.push(StreamJob {
                hook: *hook,
                config,
                out: out.join(name),
            });
        }
    }
    let bar = progress::counter(
        &format!("streaming ({} dictionaries)", jobs.len()),
        "tokens",
    );
    let t = std::time::Instant::now();
    let reports = StreamTraining {
        model: &model,
        corpus: &corpus,
        ctx_len: a.ctx_len,
        batch_contexts: a.contexts_per_batch,
        heldout_tokens: a.heldout_tokens,
        device,
    }
    .train(&jobs, &mut |n| bar.set_position(n))?;
    bar.finish_and_clear();
    println!(
        "trained {} dictionaries from the model in {:.1} s, with no activations on disk",
        jobs.len(),
        t.elapsed().as_secs_f64()
    );
    for (job, report) in jobs.iter().zip(&reports) {
        println!(
            "{} on {} ({} steps, {} tokens) into {}",
            job.config.method.name(),
            job.hook,
            report.steps,
            report.tokens,
            job.out.display()
        );
        if let Some(mt) = &report.metrics {
            print_metrics(mt);
        }
    }
    Ok(DictDir::new(&jobs[0].out))
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
