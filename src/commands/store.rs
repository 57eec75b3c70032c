//! `saescope store ...`: look inside activation runs, and benchmark the store.

use anyhow::{Context, Result, bail};
use saescope_store::{
    BosHandling, Compression, Dtype, ReadOptions, Run, RunWriter, Shuffle, TokenRecord,
    WriterOptions, manifest::MANIFEST_FILE, parts, synthetic,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print a run's (or one shard file's) manifest, schema and row counts, and verify checksums.
    Inspect(InspectArgs),
    /// Write and read a synthetic run; print write MB/s, read MB/s and shuffled tokens/s.
    Bench(BenchArgs),
    /// Merge the parts of a run harvested with `harvest --part I/N` into one run: checks that
    /// every part is complete, made with the same settings and on disk, then writes the run's
    /// manifest (no data is copied).
    Merge(MergeArgs),
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The run directory the parts were harvested into (`harvest --out`).
    run: PathBuf,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// A run directory, its manifest.json, or one of its Parquet files.
    path: PathBuf,
    /// Skip re-hashing the files (sizes, footers, schemas and row counts are still checked).
    #[arg(long)]
    no_checksums: bool,
    /// Print the manifest and the check results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Tokens to write.
    #[arg(long, default_value_t = 2_000_000)]
    tokens: u64,
    /// Values per token (one hook point).
    #[arg(long, default_value_t = 576)]
    dim: usize,
    /// Storage dtype.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Shard size in MiB.
    #[arg(long, default_value_t = 256)]
    shard_mb: u64,
    /// Tokens per batch when reading.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Shuffle buffer, in tokens.
    #[arg(long, default_value_t = 65_536)]
    shuffle_buffer: usize,
    /// Where to write the run (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Inspect(a) => inspect(a),
        Command::Bench(a) => bench(a),
        Command::Merge(a) => merge(a),
    }
}

fn merge(args: MergeArgs) -> Result<()> {
    let t = Instant::now();
    let m = parts::merge(&args.run)?;
    println!(
        "merged {} parts into {}: {} tokens in {} shards ({:.2} s)",
        m.extra.get("parts").and_then(|v| v.as_u64()).unwrap_or(0),
        args.run.display(),
        m.total_tokens,
        m.shards.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Finds the run directory for a path that may be the run, its manifest, or a file inside it.
fn locate_run(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .take(3)
        .find(|p| p.is_dir() && p.join(MANIFEST_FILE).is_file())
        .map(Path::to_owned)
}

fn inspect(args: InspectArgs) -> Result<()> {
    let remote = saescope_store::remote::is_url(&args.path);
    if !remote && !args.path.exists() {
        bail!("{}: no such file or directory", args.path.display());
    }
    let located = match remote {
        true => Some(args.path.clone()),
        false => locate_run(&args.path),
    };
    let Some(dir) = located else {
        if args.path.is_file() {
            return inspect_loose_file(&args.path);
        }
        bail!(
            "{}: not a saescope run (no manifest.json)",
            args.path.display()
        );
    };
    let run = Run::open_part(&dir)?;
    let m = run.manifest();
    // A single file inside the run: check only its shard.
    let only_shard = if args.path.is_file() && args.path.file_name() != Some(MANIFEST_FILE.as_ref())
    {
        let rel = args.path.canonicalize()?;
        let found = m.shards.iter().position(|s| {
            [&s.activations.path, &s.tokens.path]
                .iter()
                .any(|p| dir.join(p).canonicalize().ok().as_ref() == Some(&rel))
        });
        Some(found.with_context(|| {
            format!(
                "{}: not listed in {}",
                args.path.display(),
                dir.join(MANIFEST_FILE).display()
            )
        })?)
    } else {
        None
    };
    let shards: Vec<usize> = match only_shard {
        Some(i) => vec![i],
        None => (0..m.shards.len()).collect(),
    };

    let pb = crate::progress::bar(shards.len() as u64, "checking", "shards");
    let results: Vec<(usize, Result<(), String>)> = shards
        .iter()
        .map(|&i| {
            let r = run
                .check_shard(i, !args.no_checksums)
                .map_err(|e| e.to_string());
            pb.inc(1);
            (i, r)
        })
        .collect();
    pb.finish_and_clear();
    let failures = results.iter().filter(|(_, r)| r.is_err()).count();

    if args.json {
        let checks: Vec<_> = results
            .iter()
            .map(|(i, r)| {
                serde_json::json!({"shard": i, "ok": r.is_ok(), "error": r.as_ref().err()})
            })
            .collect();
        let out = serde_json::json!({
            "run": dir,
            "manifest": m,
            "checksums_verified": !args.no_checksums,
            "checks": checks,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let s = m;
        println!("run        {}", dir.display());
        println!(
            "format     {} v{} ({}), written by {}",
            m.format,
            m.format_version,
            if m.complete {
                "complete"
            } else {
                "INCOMPLETE: can be resumed"
            },
            m.created_by
        );
        println!(
            "model      {}{}{}",
            s.model.name,
            s.model
                .architecture
                .as_deref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default(),
            s.model
                .sha256
                .as_deref()
                .map(|h| format!(", sha256 {h}"))
                .unwrap_or_default()
        );
        let id = |t: Option<u32>| t.map_or("none".to_owned(), |t| t.to_string());
        println!(
            "tokenizer  {}, vocab {}, bos {}, eos {}",
            s.tokenizer.name,
            s.tokenizer.vocab_size,
            id(s.tokenizer.bos_token_id),
            id(s.tokenizer.eos_token_id)
        );
        let bos = match s.context.bos {
            BosHandling::PrependEachContext => "BOS first in each context",
            BosHandling::None => "no BOS",
        };
        println!("context    {} tokens, {bos}", s.context.ctx_len);
        println!(
            "corpus     {}{}",
            s.corpus.name,
            s.corpus
                .description
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
        println!("hooks");
        for h in &m.hooks {
            println!(
                "  {:<36} shape {:?}  {}  ({} values per token)",
                h.name,
                h.shape,
                h.dtype.name(),
                h.dim()
            );
        }
        let bytes: u64 = m
            .shards
            .iter()
            .map(|s| s.activations.bytes + s.tokens.bytes)
            .sum();
        println!(
            "tokens     {} in {} shards, {:.1} MB on disk (rows per shard {}, per row group {}, compression {})",
            m.total_tokens,
            m.shards.len(),
            bytes as f64 / 1e6,
            m.layout.rows_per_shard,
            m.layout.rows_per_row_group,
            match m.layout.compression {
                Compression::None => "none".to_owned(),
                Compression::Zstd(level) => format!("zstd {level}"),
            }
        );
        println!("shards");
        for (i, r) in &results {
            let sh = &m.shards[*i];
            let state = match r {
                Ok(()) if args.no_checksums => "ok (checksums not verified)".to_owned(),
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("FAILED: {e}"),
            };
            println!(
                "  {:>5}  tokens {:>10}..{:<10} {:>9.1} MB  {}",
                sh.index,
                sh.first_token,
                sh.first_token + sh.rows,
                (sh.activations.bytes + sh.tokens.bytes) as f64 / 1e6,
                state
            );
        }
    }
    if only_shard.is_some() && !args.json {
        println!("file       {}", args.path.display());
        if let Err(e) = print_parquet_schema(&args.path) {
            println!("  {e:#}");
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} shard(s) failed their checks",
            results.len()
        );
    }
    if !args.json {
        println!(
            "all {} shard(s) passed{}",
            results.len(),
            if args.no_checksums {
                ""
            } else {
                ", checksums verified"
            }
        );
    }
    Ok(())
}

/// A Parquet file outside any run: print what Parquet itself knows.
fn inspect_loose_file(path: &Path) -> Result<()> {
    println!(
        "file       {} (not inside a saescope run: no manifest to check against)",
        path.display()
    );
    print_parquet_schema(path)
}

/// Row counts and the Arrow schema of one Parquet file, as any Arrow-based reader sees it.
fn print_parquet_schema(path: &Path) -> Result<()> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f)
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let meta = builder.metadata();
    println!(
        "rows       {} in {} row groups",
        meta.file_metadata().num_rows(),
        meta.num_row_groups()
    );
    println!("schema");
    for field in builder.schema().fields() {
        let mut meta: Vec<String> = field
            .metadata()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        meta.sort();
        println!(
            "  {:<36} {}{}{}",
            field.name(),
            field.data_type(),
            if field.is_nullable() {
                ", nullable"
            } else {
                ""
            },
            if meta.is_empty() {
                String::new()
            } else {
                format!("  [{}]", meta.join(", "))
            }
        );
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("saescope-bench")
                .tempdir()?;
            tmp.path().join("run")
        }
    };
    let hook = "blocks.0.hook_resid_post";
    let spec = synthetic::spec(vec![synthetic::hook(hook, &[args.dim], args.dtype)], 128);
    let opts = WriterOptions {
        shard_bytes: args.shard_mb << 20,
        row_group_bytes: 16 << 20,
        compression: Compression::None,
    };
    let value_bytes = args.tokens as f64 * args.dim as f64 * 4.0;
    println!(
        "store bench: {} tokens x {} values ({:.2} GB as f32, stored as {}) in {}",
        args.tokens,
        args.dim,
        value_bytes / 1e9,
        args.dtype.name(),
        dir.display()
    );

    // Write: one pre-generated block of rows is appended repeatedly, so the figure measures the
    // store (conversion, encoding, hashing, I/O), not the synthetic generator.
    let block = 16_384usize.min(args.tokens as usize).max(1);
    let mut values = Vec::new();
    synthetic::fill(0, block, 0, args.dim, &mut values);
    let records: Vec<TokenRecord> = (0..block as u64)
        .map(|t| synthetic::token(t, 128, 49_152))
        .collect();
    let pb = crate::progress::bar(args.tokens, "writing", "tokens");
    let t0 = Instant::now();
    let mut writer = RunWriter::create(&dir, spec, &opts)?;
    let mut done = 0u64;
    while done < args.tokens {
        let n = (args.tokens - done).min(block as u64) as usize;
        writer.append(&records[..n], &[&values[..n * args.dim]])?;
        done += n as u64;
        pb.set_position(done);
    }
    let manifest = writer.finish()?;
    let write_s = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let disk: u64 = manifest.shards.iter().map(|s| s.activations.bytes).sum();

    let run = Run::open(&dir)?;
    let read = |verify: bool, shuffle: Option<Shuffle>, label: &str| -> Result<(f64, u64, f64)> {
        let pb = crate::progress::bar(args.tokens, label, "tokens");
        let opts = ReadOptions {
            batch_tokens: args.batch,
            shuffle,
            verify_checksums: verify,
            ..ReadOptions::default()
        };
        let t = Instant::now();
        let mut rows = 0u64;
        let mut checksum = 0f64;
        for batch in run.batches(hook, &opts)? {
            let b = batch?;
            rows += b.rows() as u64;
            checksum += b.data[0] as f64;
            pb.set_position(rows);
        }
        pb.finish_and_clear();
        Ok((t.elapsed().as_secs_f64(), rows, checksum))
    };
    let (seq_s, seq_rows, _) = read(false, None, "reading")?;
    let (ver_s, _, _) = read(true, None, "verifying")?;
    let shuffle = Shuffle {
        seed: 0,
        buffer_tokens: args.shuffle_buffer,
    };
    let (shuf_s, shuf_rows, _) = read(false, Some(shuffle), "shuffling")?;
    if seq_rows != args.tokens || shuf_rows != args.tokens {
        bail!(
            "read back {seq_rows} and {shuf_rows} tokens, wrote {}",
            args.tokens
        );
    }

    let mb = value_bytes / 1e6;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "  shards            {} ({:.1} MB on disk)",
        manifest.shards.len(),
        disk as f64 / 1e6
    );
    println!(
        "  write             {:>8.0} MB/s of f32   ({:.2} s, incl. sha256 and fsync)",
        mb / write_s,
        write_s
    );
    println!(
        "  read, sequential  {:>8.0} MB/s of f32   ({:.2} s, {:.0} tokens/s; decoding on one background thread)",
        mb / seq_s,
        seq_s,
        args.tokens as f64 / seq_s
    );
    println!(
        "  read + sha256     {:>8.0} MB/s of f32   ({:.2} s)",
        mb / ver_s,
        ver_s
    );
    println!(
        "  read, shuffled    {:>8.0} tokens/s      ({:.2} s, buffer {} tokens; {:.2}x sequential)",
        args.tokens as f64 / shuf_s,
        shuf_s,
        args.shuffle_buffer,
        seq_s / shuf_s
    );
    println!(
        "  machine           {threads} hardware threads; files in the page cache (warm reads)"
    );
    Ok(())
}
