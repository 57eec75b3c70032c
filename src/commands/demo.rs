//! `saescope demo`: the README's first command, the main job end to end on this machine.
//!
//! Today that is: check the bundled assets, harvest the residual stream of the bundled
//! SmolLM2-135M over the Brown Corpus into an activation run, then read the run back
//! (sequentially and shuffled) and summarise it. Re-running resumes an interrupted harvest or
//! re-reads a complete one. Later stages (train, evaluate, analyse, explore) extend this command.

use crate::assets::{self, ASSETS, Status};
use crate::commands::harvest;
use anyhow::{Result, bail};
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
}

pub fn run(args: Args) -> Result<()> {
    println!("== 1/3 bundled assets");
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
        "== 2/3 harvest {} tokens of the Brown Corpus from SmolLM2-135M at {} into {}",
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

    println!("== 3/3 read the run back");
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
    println!();
    println!(
        "Inspect the run:   saescope store inspect {}",
        args.out.display()
    );
    println!(
        "Read it elsewhere: duckdb -c \"select count(*) from '{}/activations/*.parquet'\"",
        args.out.display()
    );
    Ok(())
}
