//! `saescope harvest`: run a model over a corpus and store activations at hook points.

use crate::assets;
use anyhow::{Context, Result, bail};
use saescope_activations::corpus::CorpusSource;
use saescope_activations::harvest::{HarvestConfig, Harvester};
use saescope_activations::hooks::HookPoint;
use saescope_activations::model::Model;
use saescope_activations::tokenizer::TextTokenizer;
use saescope_store::{Compression, Dtype, ModelInfo, WriterOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The run directory to write (or, with --resume, to continue).
    #[arg(long)]
    pub out: PathBuf,
    /// Model weights: a GGUF file, or a Hugging Face checkpoint directory (config.json,
    /// safetensors, tokenizer.json; Llama, Qwen2, Mistral or GPT-2). Default: the bundled
    /// SmolLM2-135M-Instruct.
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
    #[arg(long)]
    pub resume: bool,
}

/// Resolves `--corpus`.
pub fn corpus_source(spec: &str, text_column: &str) -> Result<CorpusSource> {
    let cache = assets::cache_dir();
    let bundled = |name: &str| -> Result<PathBuf> {
        let a = assets::find(name)?;
        let dir = a.dir(&cache);
        if a.status(&cache, false) != assets::Status::Installed {
            bail!("the bundled corpus `{name}` is not installed (run `saescope setup {name}`)");
        }
        Ok(dir)
    };
    let column = text_column.to_owned();
    Ok(match spec {
        "brown" => CorpusSource::Brown(bundled("brown")?),
        "shakespeare" => CorpusSource::Shakespeare(bundled("shakespeare")?),
        path => {
            let p = PathBuf::from(path);
            if !p.exists() {
                bail!(
                    "--corpus {path}: no such file or directory (bundled corpora: brown, shakespeare)"
                );
            }
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            let has_parquet = p.is_dir()
                && std::fs::read_dir(&p)?
                    .any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "parquet")));
            match ext {
                "jsonl" | "json" => CorpusSource::Jsonl { path: p, column },
                "parquet" => CorpusSource::Parquet { path: p, column },
                _ if has_parquet => CorpusSource::Parquet { path: p, column },
                _ if p.is_dir() => CorpusSource::TextDir(p),
                _ => bail!(
                    "--corpus {path}: expected a directory of .txt files, a .jsonl file or Parquet"
                ),
            }
        }
    })
}

/// Expands `blocks.*.X` to every layer and parses the names.
pub fn parse_hooks(names: &[String], n_layers: usize) -> Result<Vec<HookPoint>> {
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if let Some(rest) = name.strip_prefix("blocks.*.") {
            for l in 0..n_layers {
                out.push(
                    format!("blocks.{l}.{rest}")
                        .parse::<HookPoint>()
                        .map_err(anyhow::Error::msg)?,
                );
            }
        } else {
            out.push(name.parse::<HookPoint>().map_err(anyhow::Error::msg)?);
        }
    }
    out.dedup();
    Ok(out)
}

pub fn default_model() -> PathBuf {
    let a = assets::find("smollm2-135m-instruct").expect("bundled model is in the asset table");
    a.key_path(&assets::cache_dir())
}

pub fn device(name: &str) -> Result<tch::Device> {
    match name {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
        "cuda" => bail!(
            "--device cuda: CUDA is not available (a CPU build, or no GPU; see `saescope doctor`)"
        ),
        other => bail!("--device {other}: expected cpu or cuda"),
    }
}

/// A loaded model with its tokenizer and provenance.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: TextTokenizer,
    pub info: ModelInfo,
}

/// Refuses what saescope will not load, before looking for the file.
fn check_model_path(path: &Path) -> Result<()> {
    if path
        .extension()
        .is_some_and(|e| e == "bin" || e == "pt" || e == "pth" || e == "ckpt")
    {
        bail!(
            "{}: pickled checkpoints are not loaded (unpickling can run arbitrary code); convert to \
             safetensors (in Python: model.save_pretrained(dir, safe_serialization=True)) or to GGUF \
             (llama.cpp's convert_hf_to_gguf.py) first",
            path.display()
        );
    }
    if !path.exists() {
        bail!(
            "{}: model not found (the bundled model installs with `saescope setup`)",
            path.display()
        );
    }
    Ok(())
}

/// Loads a GGUF file or a Hugging Face checkpoint directory, with its tokenizer, computing in
/// `compute` (`f32` or `bf16`).
pub fn load_model(path: &Path, device: tch::Device, compute: &str) -> Result<Loaded> {
    check_model_path(path)?;
    let t = Instant::now();
    let kind = match compute {
        "bf16" => tch::Kind::BFloat16,
        _ => tch::Kind::Float,
    };
    let loaded =
        Model::load(path, device, kind).with_context(|| format!("loading {}", path.display()))?;
    let Some(tokenizer) = loaded.tokenizer else {
        bail!(
            "{}: no tokenizer (put the model's tokenizer.json in the checkpoint directory)",
            path.display()
        );
    };
    // A checkpoint directory is identified by its config; a file by its own bytes.
    let hashed = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_owned()
    };
    let info = ModelInfo {
        name: loaded.name,
        architecture: Some(loaded.model.architecture().into()),
        file: Some(path.display().to_string()),
        sha256: Some(assets::sha256_path(&hashed)?),
        compute_dtype: Some(compute.into()),
    };
    tracing::info!(
        "loaded {} ({}, {} layers) in {:.1} s",
        info.name,
        loaded.model.architecture(),
        loaded.model.n_layers(),
        t.elapsed().as_secs_f64()
    );
    Ok(Loaded {
        model: loaded.model,
        tokenizer,
        info,
    })
}

pub fn run(args: Args) -> Result<()> {
    let device = device(&args.device)?;
    let corpus = corpus_source(&args.corpus, &args.text_column)?;
    let model_path = args.model.clone().unwrap_or_else(default_model);
    let loaded = load_model(&model_path, device, &args.compute_dtype)?;
    let hooks = parse_hooks(&args.hooks, loaded.model.n_layers())?;
    let cfg = HarvestConfig {
        hooks,
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
    };
    let pb = match args.max_tokens {
        Some(n) => crate::progress::bar(n, "harvesting", "tokens"),
        None => crate::progress::counter("harvesting", "tokens"),
    };
    let t = Instant::now();
    let harvester = Harvester {
        model: &loaded.model,
        tokenizer: &loaded.tokenizer,
        model_info: loaded.info,
    };
    let report = harvester.run(&corpus, &cfg, &args.out, args.resume, &mut |n| {
        pb.set_position(n)
    })?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let m = &report.manifest;
    println!(
        "harvested {} tokens ({} this run, {:.0} tokens/s) from {} documents of {} into {} ({} shards)",
        m.total_tokens,
        report.tokens_this_run,
        report.tokens_this_run as f64 / secs,
        report.documents,
        corpus.name(),
        args.out.display(),
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
    Ok(())
}
