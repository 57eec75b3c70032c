//! `saescope harvest`: run a model over a corpus and store activations at hook points.

use anyhow::Result;
use saescope_activations::assets;
use saescope_activations::corpus::CorpusSource;
use saescope_activations::harvest::{HarvestConfig, HarvestReport, Harvester};
use saescope_activations::hooks::HookPoint;
use saescope_activations::model::{TextModel, device};
use saescope_activations::parts::Part;
use saescope_store::{Compression, Dtype, WriterOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The run directory to write (or, with --resume, to continue).
    #[arg(long)]
    pub out: PathBuf,
    /// Model weights: a GGUF file, or a Hugging Face checkpoint directory (config.json,
    /// safetensors, tokenizer.json; Llama, Qwen2/3, Mistral, Gemma 2/3, GPT-2 or GPT-NeoX).
    /// Default: the bundled SmolLM2-135M-Instruct.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `brown` or `shakespeare` (bundled), a directory of .txt files, a .jsonl file, or a
    /// .parquet file or directory.
    #[arg(long, default_value = "brown")]
    pub corpus: String,
    /// The text field of JSONL records, or the text column of Parquet files.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Hook points, comma-separated; `*` for the layer means every layer
    /// (e.g. `blocks.*.hook_resid_post`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "blocks.6.hook_resid_post"
    )]
    pub hooks: Vec<String>,
    /// Tokens per context, BOS included.
    #[arg(long, default_value_t = 128)]
    pub ctx_len: usize,
    /// Contexts per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Stop after this many tokens (default: the whole corpus).
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Storage dtype of the activations: f32, f16 or bf16 (half the disk).
    #[arg(long, default_value = "f32")]
    pub dtype: Dtype,
    /// Where the model runs: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The dtype the model computes in: f32, or bf16 (about 2x faster on CPUs with AVX512-BF16
    /// and on GPUs; logits within about 2% of f32). Activations are stored as --dtype says.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub compute_dtype: String,
    /// Target shard size in MiB.
    #[arg(long, default_value_t = 256)]
    pub shard_mb: u64,
    /// Compress activation shards with zstd.
    #[arg(long)]
    pub zstd: bool,
    /// Continue an interrupted run in --out; it must have been started with the same settings.
    /// With --part, also starts the part when nothing of it is there yet, and skips a part that
    /// is complete, so a re-submitted job does only what is left.
    #[arg(long)]
    pub resume: bool,
    /// Harvest only part I of N (numbered from 0, as Slurm numbers array tasks) into
    /// OUT/parts/: a contiguous share of the run's batches, as a single machine would compute
    /// them. The last part to finish merges all parts into the run (or run `saescope store
    /// merge OUT`).
    #[arg(long, value_name = "I/N")]
    pub part: Option<Part>,
}

pub fn run(args: Args) -> Result<()> {
    let device = device(&args.device)?;
    let corpus = CorpusSource::parse(&args.corpus, &args.text_column)?;
    let model_path = args.model.clone().unwrap_or_else(assets::default_model);
    let model = TextModel::open(&model_path, device, args.compute_dtype.parse()?)?;
    let cfg = HarvestConfig {
        hooks: HookPoint::parse_list(&args.hooks, model.model.n_layers())?,
        ctx_len: args.ctx_len,
        batch_contexts: args.batch_size,
        max_tokens: args.max_tokens,
        storage: args.dtype,
        writer: WriterOptions {
            shard_bytes: args.shard_mb << 20,
            compression: if args.zstd {
                Compression::Zstd(3)
            } else {
                Compression::None
            },
            ..WriterOptions::default()
        },
        part: args.part,
    };
    harvest(&model, &corpus, &cfg, &args.out, args.resume)
}

/// Runs the harvest with a progress bar and prints what it wrote (the demo's harvest too).
pub fn harvest(
    model: &TextModel,
    corpus: &CorpusSource,
    cfg: &HarvestConfig,
    out: &Path,
    resume: bool,
) -> Result<()> {
    let pb = match (cfg.max_tokens, cfg.part) {
        (Some(n), None) => crate::progress::bar(n, "harvesting", "tokens"),
        (_, Some(part)) => crate::progress::counter(&format!("harvesting part {part}"), "tokens"),
        (None, None) => crate::progress::counter("harvesting", "tokens"),
    };
    let t = Instant::now();
    let harvester = Harvester {
        model: &model.model,
        tokenizer: &model.tokenizer,
        model_info: model.info.clone(),
    };
    let report = harvester.run(corpus, cfg, out, resume, &mut |n| pb.set_position(n))?;
    pb.finish_and_clear();
    print_report(&report, corpus, out, t.elapsed().as_secs_f64());
    Ok(())
}

fn print_report(report: &HarvestReport, corpus: &CorpusSource, out: &Path, secs: f64) {
    let m = &report.manifest;
    if let Some(p) = &m.part {
        println!(
            "part {}/{}: {} of its {} tokens ({} this run, {:.0} tokens/s): tokens {}..{} of the run's {}",
            p.index,
            p.count,
            m.total_tokens,
            p.tokens,
            report.tokens_this_run,
            report.tokens_this_run as f64 / secs,
            m.first_token,
            m.first_token + p.tokens,
            p.run_tokens
        );
        match &report.merged {
            Some(run) => println!(
                "all {} parts are complete: merged into {} ({} tokens, {} shards)",
                p.count,
                out.display(),
                run.total_tokens,
                run.shards.len()
            ),
            None => println!(
                "waiting for part{} {} before the run is merged",
                if report.waiting.len() == 1 { "" } else { "s" },
                saescope_jobs::slurm::ranges(&report.waiting)
            ),
        }
        return;
    }
    println!(
        "harvested {} tokens ({} this run, {:.0} tokens/s) from {} documents of {} into {} ({} shards)",
        m.total_tokens,
        report.tokens_this_run,
        report.tokens_this_run as f64 / secs,
        report.documents,
        corpus.name(),
        out.display(),
        m.shards.len()
    );
    println!(
        "hooks: {}",
        m.hooks
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if report.replaced_sequences > 0 {
        println!(
            "note: {} invalid UTF-8 sequences were replaced by U+FFFD",
            report.replaced_sequences
        );
    }
}
