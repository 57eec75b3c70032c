//! `saescope demo`: the README's first command, the main job end to end on this machine.
//!
//! Today that is: check the bundled assets, harvest the residual stream of the bundled
//! SmolLM2-135M over the Brown Corpus into an activation run, read the run back (sequentially
//! and shuffled), train a TopK dictionary on it and print its held-out metrics, splice it into
//! the model over text the run did not see, and build its feature store. Re-running resumes an
//! interrupted harvest or training, and re-reads what is complete. At a desktop it ends by
//! opening the explorer on the run; elsewhere it prints the command that does.

use crate::assets::{self, ASSETS, Status};
use crate::commands::dict::DictArgs;
use crate::commands::{analyze, eval, explore, harvest, train};
use anyhow::{Context, Result, bail};
use saescope_sae::dictionary::WEIGHTS_FILE;
use saescope_sae::metrics::Metrics;
use saescope_sae::train::{CHECKPOINT_FILE, METRICS_FILE};
use saescope_store::features::{FeatureStore, SUMMARY_FILE};
use saescope_store::{Dtype, ReadOptions, Run, Shuffle, manifest::MANIFEST_FILE};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the demo run.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Tokens to harvest.
    #[arg(long, default_value_t = 200_000)]
    tokens: u64,
    /// The hook point to harvest.
    #[arg(long, default_value = "blocks.6.hook_resid_post")]
    hook: String,
    /// Latents of the demo dictionary.
    #[arg(long, default_value_t = 4096)]
    latents: usize,
    /// Training tokens (about three passes over the demo's training shards).
    #[arg(long, default_value_t = 500_000)]
    train_tokens: u64,
    /// Tokens of held-out text to evaluate the dictionary on inside the model.
    #[arg(long, default_value_t = 4096)]
    eval_tokens: u64,
}

pub fn run(args: Args) -> Result<()> {
    println!("== 1/6 bundled assets");
    let cache = assets::cache_dir();
    let missing: Vec<&str> = ASSETS
        .iter()
        .filter(|a| a.status(&cache, false) != Status::Installed)
        .map(|a| a.name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "assets missing: {} (run `saescope setup`)",
            missing.join(", ")
        );
    }
    println!("  all {} installed in {}", ASSETS.len(), cache.display());

    println!(
        "== 2/6 harvest {} tokens of the Brown Corpus from SmolLM2-135M at {} into {}",
        args.tokens,
        args.hook,
        args.out.display()
    );
    let existing = args.out.join(MANIFEST_FILE).exists();
    let complete = existing && Run::open(&args.out)?.manifest().complete;
    if complete {
        println!(
            "  {} already holds a complete run: reading it instead",
            args.out.display()
        );
    } else {
        if existing {
            println!("  resuming an interrupted harvest");
        }
        harvest::run(harvest::Args {
            out: args.out.clone(),
            model: None,
            corpus: "brown".into(),
            text_column: "text".into(),
            hooks: vec![args.hook.clone()],
            ctx_len: 128,
            batch_size: 16,
            max_tokens: Some(args.tokens),
            dtype: Dtype::F32,
            device: "cpu".into(),
            compute_dtype: "f32".into(),
            shard_mb: 64,
            zstd: false,
            resume: existing,
        })?;
    }

    println!("== 3/6 read the run back");
    let run = Run::open(&args.out)?;
    let m = run.manifest();
    let hook = &m.hooks[0];
    for shuffle in [
        None,
        Some(Shuffle {
            seed: 0,
            buffer_tokens: 65_536,
        }),
    ] {
        let label = if shuffle.is_some() {
            "shuffled"
        } else {
            "sequential"
        };
        let pb = crate::progress::bar(m.total_tokens, label, "tokens");
        let t = std::time::Instant::now();
        let (mut rows, mut sum_norm, mut non_finite) = (0u64, 0f64, 0u64);
        for batch in run.batches(
            &hook.name,
            &ReadOptions {
                shuffle,
                ..ReadOptions::default()
            },
        )? {
            let b = batch?;
            for r in 0..b.rows() {
                let row = b.row(r);
                non_finite += row.iter().filter(|v| !v.is_finite()).count() as u64;
                sum_norm += row
                    .iter()
                    .map(|&v| (v as f64) * (v as f64))
                    .sum::<f64>()
                    .sqrt();
            }
            rows += b.rows() as u64;
            pb.set_position(rows);
        }
        pb.finish_and_clear();
        if rows != m.total_tokens || non_finite > 0 {
            bail!(
                "read {rows} of {} tokens, {non_finite} non-finite values",
                m.total_tokens
            );
        }
        println!(
            "  {label:<10} {rows} tokens x {} in {:.2} s; mean L2 norm {:.1}",
            hook.dim(),
            t.elapsed().as_secs_f64(),
            sum_norm / rows as f64
        );
    }
    let tokens = run.read_tokens(0)?;
    let docs = tokens
        .iter()
        .filter_map(|t| t.doc_id)
        .max()
        .map_or(0, |d| d + 1);
    println!(
        "  token table: {} contexts of {} tokens in shard 0, from {docs} documents",
        tokens.len() / m.context.ctx_len as usize,
        m.context.ctx_len
    );

    println!(
        "== 4/6 train a TopK dictionary ({} latents, k = 32) on {}",
        args.latents, args.hook
    );
    let dict = args
        .out
        .join("dictionaries")
        .join(format!("{}-topk", args.hook));
    if dict.join(WEIGHTS_FILE).exists() {
        println!("  {} is already trained: its metrics", dict.display());
        let path = dict.join(METRICS_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let metrics: Metrics = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a metrics file", path.display()))?;
        train::print_metrics(&metrics);
    } else {
        let resume = dict.join(CHECKPOINT_FILE).exists();
        if resume {
            println!("  resuming an interrupted training");
        }
        train::run(train::Args {
            run: args.out.clone(),
            hook: args.hook.clone(),
            out: Some(dict.clone()),
            config: None,
            method: Some("topk".into()),
            latents: Some(args.latents),
            k: Some(32),
            tokens: Some(args.train_tokens),
            // A short run: smaller batches for more steps, and a larger step than the
            // 1/sqrt(n) rule's, which is tuned for runs of millions of tokens.
            batch_size: Some(1024),
            lr: Some(1e-3),
            seed: None,
            device: "cpu".into(),
            resume,
        })?;
    }

    println!(
        "== 5/6 splice the dictionary into the model over {} held-out tokens",
        args.eval_tokens
    );
    let report = dict.join(eval::EVAL_FILE);
    if report.exists() {
        let text = std::fs::read_to_string(&report)
            .with_context(|| format!("reading {}", report.display()))?;
        let r: saescope_sae::splice::SpliceReport = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an evaluation report", report.display()))?;
        println!("  {} is already evaluated:", dict.display());
        eval::print_report(&r, "the run's corpus");
    } else {
        eval::run(eval::Args {
            source: DictArgs::of_run(dict.clone(), args.out.clone()),
            corpus: None,
            text_column: "text".into(),
            tokens: args.eval_tokens,
            batch_size: 8,
            ctx_len: None,
            head: None,
            include_bos: false,
            json: false,
        })?;
    }

    println!("== 6/6 analyse every feature of the dictionary over the run");
    let store_dir = dict.join("features");
    if store_dir.join(SUMMARY_FILE).exists() {
        let s = FeatureStore::open(&store_dir)?.summary;
        println!(
            "  {} already holds the feature store: {} features over {} tokens, {} dead",
            store_dir.display(),
            s.features,
            s.tokens,
            s.dead
        );
    } else {
        analyze::run(analyze::Args {
            source: DictArgs::of_run(dict.clone(), args.out.clone()),
            out: None,
            tokens: None,
            batch_size: 4096,
            include_bos: false,
        })?;
    }

    println!();
    let explore = format!("saescope explore {}", args.out.display());
    println!("Explore it:        {explore}");
    println!(
        "Inspect the run:   saescope store inspect {}",
        args.out.display()
    );
    println!(
        "The dictionary:    {} (SAELens layout: cfg.json, sae_weights.safetensors; metrics.json, eval.json)",
        dict.display()
    );
    println!(
        "Its features:      duckdb -c \"select feature, density, logit_top_tokens from '{}/features.parquet' order by density desc limit 10\"",
        store_dir.display()
    );
    println!(
        "Read it elsewhere: duckdb -c \"select count(*) from '{}/activations/*.parquet'\"",
        args.out.display()
    );
    // A person at a desktop gets the explorer; a script or a terminal without a display gets
    // the command above.
    use std::io::IsTerminal;
    if explore::display_available()
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal()
    {
        println!("== opening the explorer (close its window to finish)");
        explore::run(explore::Args {
            run: Some(args.out.clone()),
            model: None,
            device: "cpu".into(),
            view: None,
            dictionary: None,
            feature: None,
            prompt: None,
        })?;
    }
    Ok(())
}
