//! `saescope examples`: one pass over a dictionary's run that draws, for each chosen latent, the
//! windows its explainer will read (train) and those its scorers will read (test), from
//! disjoint halves of the run, into `DICT/examples.parquet`.

use super::dict;
use crate::progress::Tracker;
use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::index;
use saescope_analysis::Session;
use saescope_analysis::examples::{ExampleConfig, build_example_store};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub source: dict::DictArgs,
    /// Latents to draw examples for: a range `A..B` (B excluded) or a list `3,17,42`
    /// (default: every latent).
    #[arg(long, conflicts_with = "sample")]
    pub latents: Option<String>,
    /// Draw examples for this many latents chosen at random (with --seed).
    #[arg(long)]
    pub sample: Option<usize>,
    /// The draw's settings as a TOML file (any field of the examples config; flags override).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tokens per window.
    #[arg(long)]
    pub window: Option<usize>,
    /// Activating windows a latent needs, else it is skipped and reported.
    #[arg(long)]
    pub min_activating: Option<usize>,
    /// Seed of the draws (and of --sample).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `k` of `from` chosen at random with `seed`, in increasing order.
pub fn sample_latents(from: &[u32], k: usize, seed: u64) -> Result<Vec<u32>> {
    if k == 0 || k > from.len() {
        bail!(
            "--sample {k}: there are {} latents to choose from",
            from.len()
        );
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v: Vec<u32> = index::sample(&mut rng, from.len(), k)
        .iter()
        .map(|i| from[i])
        .collect();
    v.sort_unstable();
    Ok(v)
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg: ExampleConfig = super::toml_config(a.config.as_deref(), "examples config")?;
    cfg.window = a.window.unwrap_or(cfg.window);
    cfg.min_activating = a.min_activating.unwrap_or(cfg.min_activating);
    cfg.seed = a.seed.unwrap_or(cfg.seed);
    let session = Session::open(&a.source.spec()?)?;
    let n = session.opened.dict.as_dyn().n_latents();
    let latents = match (&a.latents, a.sample) {
        (Some(spec), _) => parse_latents(spec)?,
        (None, Some(k)) => sample_latents(&(0..n as u32).collect::<Vec<_>>(), k, cfg.seed)?,
        (None, None) => (0..n as u32).collect(),
    };
    let mut bar = Tracker::new("drawing examples", "tokens");
    let (s, seconds) = build_example_store(&session, &latents, &cfg, &mut |done, total| {
        bar.update(done, total)
    })?;
    bar.finish();
    let drawn = s.latents.len() - s.skipped.len();
    println!(
        "drew examples for {drawn} of {} latents of {} over {} tokens of {} in {seconds:.1} s",
        s.latents.len(),
        s.hook,
        s.tokens,
        s.run.display()
    );
    println!(
        "  train windows from tokens 0..{}, test windows from {}..{}; {} activating, {} random silent, {} neighbour silent",
        s.split_token, s.split_token, s.tokens, s.rows[0], s.rows[1], s.rows[2]
    );
    if !s.skipped.is_empty() {
        let shown: Vec<String> = s
            .skipped
            .iter()
            .take(10)
            .map(|(f, c)| format!("{f} ({c})"))
            .collect();
        println!(
            "  {} skipped for fewer than {} activating windows: {}{}",
            s.skipped.len(),
            cfg.min_activating,
            shown.join(", "),
            if s.skipped.len() > 10 { ", …" } else { "" }
        );
    }
    println!("  written to {}", session.opened.dir.examples().display());
    Ok(())
}

/// `A..B` or `3,17,42`.
pub fn parse_latents(spec: &str) -> Result<Vec<u32>> {
    let bad = || format!("--latents {spec:?}: expected a range A..B or a list like 3,17,42");
    if let Some((a, b)) = spec.split_once("..") {
        let (a, b): (u32, u32) = (
            a.trim().parse().with_context(bad)?,
            b.trim().parse().with_context(bad)?,
        );
        if a >= b {
            bail!("--latents {spec:?}: the range is empty");
        }
        return Ok((a..b).collect());
    }
    spec.split(',')
        .map(|s| s.trim().parse::<u32>().with_context(bad))
        .collect()
}
