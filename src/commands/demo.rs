//! `saescope demo`: the README's first command, end to end on this machine.
//!
//! Today the model runtime does not exist yet, so the demo exercises everything that does:
//! the bundled assets are checked, a run of synthetic activations (clearly labelled `synthetic`)
//! is written with the streaming writer, read back sequentially and shuffled, and every value is
//! compared with the generator. Re-running it resumes an interrupted run, or re-verifies a
//! complete one. Later stages (harvest, train, analyse, explore) extend this command.

use crate::assets::{self, ASSETS, Status};
use anyhow::{Result, bail};
use saescope_store::{
    Dtype, ReadOptions, Run, RunWriter, Shuffle, WriterOptions, manifest::MANIFEST_FILE, synthetic,
};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the demo run.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Tokens to write.
    #[arg(long, default_value_t = 200_000)]
    tokens: u64,
}

const RESID: &str = "blocks.6.hook_resid_post";
const ATTN_Z: &str = "blocks.6.attn.hook_z";

pub fn run(args: Args) -> Result<()> {
    println!("== 1/3 bundled assets");
    let cache = assets::cache_dir();
    let mut missing = Vec::new();
    for a in ASSETS {
        let st = a.status(&cache, false);
        println!(
            "  {:<24} {}",
            a.name,
            if st == Status::Installed {
                "installed"
            } else {
                "MISSING"
            }
        );
        if st != Status::Installed {
            missing.push(a.name);
        }
    }
    if !missing.is_empty() {
        bail!(
            "assets missing: {} (run `saescope setup`)",
            missing.join(", ")
        );
    }

    println!(
        "== 2/3 write an activation run ({} tokens of synthetic activations) to {}",
        args.tokens,
        args.out.display()
    );
    let mut writer = if args.out.join(MANIFEST_FILE).exists() {
        let run = Run::open(&args.out)?;
        if run.manifest().complete {
            println!(
                "  {} already holds a complete run: verifying it instead",
                args.out.display()
            );
            None
        } else {
            let w = RunWriter::resume(&args.out)?;
            println!(
                "  resuming an interrupted run at token {}",
                w.tokens_written()
            );
            Some(w)
        }
    } else {
        // Shapes of SmolLM2-135M: d_model 576; 9 heads of 64 for attention z.
        let spec = synthetic::spec(
            vec![
                synthetic::hook(RESID, &[576], Dtype::F32),
                synthetic::hook(ATTN_Z, &[9, 64], Dtype::F16),
            ],
            128,
        );
        let opts = WriterOptions {
            shard_bytes: 64 << 20,
            row_group_bytes: 8 << 20,
            ..WriterOptions::default()
        };
        Some(RunWriter::create(&args.out, spec, &opts)?)
    };
    if let Some(mut w) = writer.take() {
        let total = args.tokens;
        let pb = crate::progress::bar(total, "writing", "tokens");
        pb.set_position(w.tokens_accepted());
        synthetic::append_until(&mut w, total, 8192, |n| pb.set_position(n))?;
        let m = w.finish()?;
        pb.finish_and_clear();
        println!(
            "  wrote {} tokens in {} shards",
            m.total_tokens,
            m.shards.len()
        );
    }

    println!("== 3/3 read it back and check every value");
    let run = Run::open(&args.out)?;
    let m = run.manifest();
    for (h_idx, hook) in m.hooks.iter().enumerate() {
        let exact = hook.dtype == Dtype::F32;
        let round = |v: f32| match hook.dtype {
            Dtype::F32 => v,
            Dtype::F16 => half::f16::from_f32(v).to_f32(),
            Dtype::Bf16 => half::bf16::from_f32(v).to_f32(),
        };
        for shuffle in [
            None,
            Some(Shuffle {
                seed: 7,
                buffer_tokens: 32_768,
            }),
        ] {
            let opts = ReadOptions {
                shuffle,
                ..ReadOptions::default()
            };
            let pb = crate::progress::bar(
                m.total_tokens,
                if shuffle.is_some() {
                    "shuffled"
                } else {
                    "sequential"
                },
                "tokens",
            );
            let mut seen = vec![false; m.total_tokens as usize];
            let mut in_order = true;
            let mut next = 0u64;
            for batch in run.batches(&hook.name, &opts)? {
                let b = batch?;
                for (r, &t) in b.token_index.iter().enumerate() {
                    in_order &= t == next;
                    next += 1;
                    if std::mem::replace(&mut seen[t as usize], true) {
                        bail!("{}: token {t} was read twice", hook.name);
                    }
                    for (j, &v) in b.row(r).iter().enumerate() {
                        let want = round(synthetic::value(t, h_idx, j));
                        if v != want {
                            bail!(
                                "{}: token {t}, component {j}: read {v}, wrote {want}",
                                hook.name
                            );
                        }
                    }
                }
                pb.inc(b.rows() as u64);
            }
            pb.finish_and_clear();
            if seen.iter().any(|s| !s) {
                bail!("{}: some tokens were never read", hook.name);
            }
            println!(
                "  {:<28} {:<10} {} tokens, every value equal to the writer's{}{}",
                hook.name,
                if shuffle.is_some() {
                    "shuffled"
                } else {
                    "sequential"
                },
                m.total_tokens,
                if exact { "" } else { " after f16 rounding" },
                if shuffle.is_some() && in_order {
                    " (WARNING: order unchanged)"
                } else {
                    ""
                }
            );
        }
    }
    let tokens: usize = (0..m.shards.len())
        .map(|i| run.read_tokens(i).map(|t| t.len()))
        .sum::<Result<_, _>>()?;
    println!("  token table: {tokens} rows");
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
