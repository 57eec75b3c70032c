//! `saescope analyze`: one streaming pass over a harvest run that builds a dictionary's feature
//! store (statistics, top and interval contexts, logit effects, neighbours, per-head
//! attribution), written as Parquet tables and a JSON summary.

use super::dict;
use crate::progress::Tracker;
use anyhow::Result;
use saescope_analysis::Session;
use saescope_analysis::features::{AnalyzeConfig, FeatureStoreReport, build_feature_store};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    // `--run` is the run analysed; the model gives logit effects and token strings.
    #[command(flatten)]
    pub source: dict::DictArgs,
    /// Where to write the feature store (default: DICT/features).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Analyse at most this many tokens of the run (default: all).
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Rows encoded at once.
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
    /// Count BOS positions too (left out by default: their activations are outliers).
    #[arg(long)]
    pub include_bos: bool,
}

pub fn run(a: Args) -> Result<()> {
    let session = Session::open(&a.source.spec()?)?;
    let cfg = AnalyzeConfig {
        batch_tokens: a.batch_size,
        max_tokens: a.tokens,
        exclude_bos: !a.include_bos,
        ..AnalyzeConfig::default()
    };
    analyze(&session, &cfg, a.out.as_deref())?;
    Ok(())
}

/// Builds the feature store with a progress bar and prints what it found (the demo's too).
pub fn analyze(
    session: &Session,
    cfg: &AnalyzeConfig,
    out: Option<&Path>,
) -> Result<FeatureStoreReport> {
    let mut bar = Tracker::new("analysing", "tokens");
    let r = build_feature_store(session, cfg, out, &mut |done, total| {
        bar.update(done, total)
    })?;
    bar.finish();
    tracing::debug!(
        "folding used {:.1} s of CPU time on idle-priority threads; the encoder waited {:.2} s for it; rows built in {:.2} s",
        r.fold_cpu_seconds,
        r.wait_seconds,
        r.finish_seconds
    );
    let s = &r.summary;
    println!(
        "analysed {} features of {} over {} tokens of {} in {:.1} s ({:.0} tokens/s, {:.0} features/s in the pass)",
        s.features,
        s.hook,
        s.tokens,
        r.run.display(),
        r.pass_seconds,
        s.tokens as f64 / r.pass_seconds,
        s.features as f64 / r.pass_seconds,
    );
    println!(
        "  {} dead ({:.1}%); {} contexts; feature store in {}",
        s.dead,
        100.0 * s.dead as f64 / s.features.max(1) as f64,
        r.contexts,
        r.dir.display()
    );
    Ok(r)
}
