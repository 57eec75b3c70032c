//! `examples`: a session's example sets over its run, written into the dictionary directory as
//! `examples.parquet` and, last, `examples.json` (the settings and what was skipped), so that a
//! directory without the JSON holds no finished example sets.

use super::{ExampleConfig, build_examples};
use crate::error::Result;
use crate::features::{TokenTable, decoder_neighbours};
use crate::session::Session;
use saescope_store::examples::{ExampleKind, write_examples};
use saescope_store::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// File name of the example sets' summary, written after the table.
pub const EXAMPLES_SUMMARY_FILE: &str = "examples.json";

/// What `examples.json` records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExamplesSummary {
    /// The hook the dictionary reads.
    pub hook: String,
    /// The run the windows come from.
    pub run: PathBuf,
    /// Tokens read.
    pub tokens: u64,
    /// The first token of the test range; train windows end before it.
    pub split_token: u64,
    /// The latents asked for.
    pub latents: Vec<u32>,
    /// Latents skipped for too few activating windows, with how many they had.
    pub skipped: Vec<(u32, usize)>,
    /// Rows of each kind: activating, random silent, neighbour silent.
    pub rows: [usize; 3],
    /// The settings of the draw.
    pub config: ExampleConfig,
}

/// Draws the example sets of `latents` and writes them; `progress` gets (tokens, planned).
pub fn build_example_store(
    s: &Session,
    latents: &[u32],
    cfg: &ExampleConfig,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(ExamplesSummary, f64)> {
    let t0 = Instant::now();
    let opened = &s.opened;
    let (run_dir, run, hook) = s.harvest()?;
    let dict = opened.dict.as_dyn();
    let near = decoder_neighbours(&dict.atoms(), cfg.neighbours);
    let neighbours = |f: u32| near[f as usize].iter().map(|n| n.0).collect();
    let tokens = TokenTable::read(run)?;
    let total = run.manifest().total_tokens;
    let sets = build_examples(
        dict,
        run,
        &hook,
        &tokens,
        latents,
        &neighbours,
        cfg,
        s.device,
        &mut |done| progress(done, total),
    )?;
    let mut rows = [0usize; 3];
    for r in &sets.rows {
        rows[match r.kind {
            ExampleKind::Activating => 0,
            ExampleKind::Random => 1,
            ExampleKind::Neighbour => 2,
        }] += 1;
    }
    write_examples(&opened.dir.examples(), &sets.rows)?;
    let summary = ExamplesSummary {
        hook,
        run: run_dir.to_owned(),
        tokens: sets.tokens,
        split_token: sets.split_token,
        latents: latents.to_vec(),
        skipped: sets.skipped,
        rows,
        config: cfg.clone(),
    };
    let json = serde_json::to_vec_pretty(&summary).expect("the summary serialises");
    write_atomic(&opened.dir.path().join(EXAMPLES_SUMMARY_FILE), &json)?;
    opened.publish()?;
    Ok((summary, t0.elapsed().as_secs_f64()))
}
