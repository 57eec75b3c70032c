//! Example sets for autointerp: one streaming pass over a run that records where the chosen
//! latents (and their decoder neighbours, for hard negatives) fire, then, per latent, the
//! train windows its explainer reads and the test windows its scorers read ([`sets`]).
//!
//! Unlike the feature store's 70 contexts a feature, a latent here gets every activating
//! window of the run to draw from; a latent with fewer than `min_activating` of them is
//! skipped and reported with its count, never silently dropped. Memory grows with the chosen
//! latents' and their neighbours' firings (16 bytes each, and as much again for their activating
//! windows), not with the run.

pub mod sets;
pub mod store;

pub use store::{EXAMPLES_SUMMARY_FILE, ExamplesSummary, build_example_store};

use crate::error::{AnalysisError, Result};
use crate::features::TokenTable;
use rayon::prelude::*;
use saescope_sae::Dictionary;
use saescope_store::examples::{ExampleKind, ExampleRow, ExampleSet};
use saescope_store::{ReadOptions, Run};
use serde::{Deserialize, Serialize};
use sets::{Windows, activating, neighbour_silent, random_silent, stratified, stream};
use std::collections::{HashMap, HashSet};
use tch::{Device, Kind, Tensor};

/// How example sets are drawn. Every field has a default; a TOML or JSON file may give any.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExampleConfig {
    /// Tokens per window (default 32); windows never cross a context.
    pub window: usize,
    /// Activating windows a latent needs in the whole run, else it is skipped (default 200).
    pub min_activating: usize,
    /// Activating windows in the train set, for the explainer (default 40).
    pub train: usize,
    /// Activating windows in the test set, for the scorers (default 50).
    pub test: usize,
    /// Equal-count activation bins each set's activating windows are spread over (default 10).
    pub bins: usize,
    /// Random silent windows in each set (default 50).
    pub random: usize,
    /// Hard-negative silent windows in each set, from the decoder neighbours (default 50).
    pub neighbour: usize,
    /// Neighbours consulted for hard negatives, nearest first (default 10).
    pub neighbours: usize,
    /// Windows taken from each neighbour at most (default 10).
    pub per_neighbour: usize,
    /// The share of the run, from its start, that the train set comes from; the test set
    /// comes from the rest (default 0.5). The cut falls on a window start.
    pub train_share: f64,
    /// Seed of the draws (default 0).
    pub seed: u64,
    /// Count activations at a context's first token (BOS), which dwarf the rest for many
    /// latents (default false).
    pub include_bos: bool,
    /// Tokens read and encoded at a time (default 4096).
    pub batch_tokens: usize,
}

impl Default for ExampleConfig {
    fn default() -> Self {
        ExampleConfig {
            window: 32,
            min_activating: 200,
            train: 40,
            test: 50,
            bins: 10,
            random: 50,
            neighbour: 50,
            neighbours: 10,
            per_neighbour: 10,
            train_share: 0.5,
            seed: 0,
            include_bos: false,
            batch_tokens: 4096,
        }
    }
}

/// What the pass produced.
#[derive(Debug)]
pub struct ExampleSets {
    /// Every chosen latent's windows, sorted by latent (the examples table's rows).
    pub rows: Vec<ExampleRow>,
    /// Latents skipped for too few activating windows, with how many they had.
    pub skipped: Vec<(u32, usize)>,
    /// Tokens read.
    pub tokens: u64,
    /// The first token of the test range.
    pub split_token: u64,
}

/// Runs the pass over `hook` of `run` with `dict`, for `latents`; `neighbours(f)` lists f's
/// nearest decoder neighbours, nearest first (from the feature store).
#[allow(clippy::too_many_arguments)]
pub fn build_examples(
    dict: &dyn Dictionary,
    run: &Run,
    hook: &str,
    tokens: &TokenTable,
    latents: &[u32],
    neighbours: &dyn Fn(u32) -> Vec<u32>,
    cfg: &ExampleConfig,
    device: Device,
    progress: &mut dyn FnMut(u64),
) -> Result<ExampleSets> {
    check(cfg, dict.n_latents(), latents)?;
    let mut chosen: Vec<u32> = latents.to_vec();
    chosen.sort_unstable();
    chosen.dedup();
    let near: HashMap<u32, Vec<u32>> = chosen
        .iter()
        .map(|&f| {
            let mut n = neighbours(f);
            n.retain(|&g| g != f && (g as usize) < dict.n_latents());
            n.truncate(cfg.neighbours);
            (f, if cfg.neighbour == 0 { vec![] } else { n })
        })
        .collect();
    let mut watched: Vec<u32> = chosen
        .iter()
        .chain(near.values().flatten())
        .copied()
        .collect();
    watched.sort_unstable();
    watched.dedup();
    let firings = collect(dict, run, hook, tokens, &watched, cfg, device, progress)?;
    let read = firings.tokens;
    let windows = Windows::new(&tokens.context_pos[..read as usize], cfg.window);
    let split = windows.split(cfg.train_share);
    let at = |f: u32| watched.binary_search(&f).expect("watched");
    // Each watched latent's activating windows, once: a neighbour serves many latents.
    let windows_of: Vec<Vec<(usize, f32)>> = firings
        .per_latent
        .par_iter()
        .map(|fired| activating(&windows, fired))
        .collect();
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for &f in &chosen {
        let fired = &firings.per_latent[at(f)];
        let active = windows_of[at(f)].clone();
        if active.len() < cfg.min_activating {
            skipped.push((f, active.len()));
            continue;
        }
        let near: Vec<(u32, Vec<(usize, f32)>)> = near[&f]
            .iter()
            .map(|&g| (g, windows_of[at(g)].clone()))
            .collect();
        let active_set: HashSet<usize> = active.iter().map(|a| a.0).collect();
        for set in [ExampleSet::Train, ExampleSet::Test] {
            let range = windows.range(set, split);
            let mut rng = stream(cfg.seed, f, set);
            let mine: Vec<(usize, f32)> = active
                .iter()
                .copied()
                .filter(|(w, _)| range.contains(w))
                .collect();
            let n = match set {
                ExampleSet::Train => cfg.train,
                ExampleSet::Test => cfg.test,
            };
            let row = |w: usize, kind, bin, source| {
                let span = windows.span(w);
                ExampleRow {
                    latent: f,
                    set,
                    kind,
                    bin,
                    source,
                    start: span.start,
                    token_ids: tokens.token_id[span.start as usize..span.end as usize].to_vec(),
                    acts: acts_in(fired, span),
                }
            };
            for (w, bin) in stratified(&mine, n, cfg.bins, &mut rng) {
                rows.push(row(w, ExampleKind::Activating, bin, f));
            }
            for w in random_silent(range.clone(), &active_set, cfg.random, &mut rng) {
                rows.push(row(w, ExampleKind::Random, -1, f));
            }
            let hard =
                neighbour_silent(&near, range, &active_set, cfg.neighbour, cfg.per_neighbour);
            for (w, g) in hard {
                rows.push(row(w, ExampleKind::Neighbour, -1, g));
            }
        }
    }
    Ok(ExampleSets {
        rows,
        skipped,
        tokens: read,
        split_token: if split < windows.len() {
            windows.span(split).start
        } else {
            read
        },
    })
}

fn check(cfg: &ExampleConfig, n: usize, latents: &[u32]) -> Result<()> {
    if cfg.window == 0 || cfg.bins == 0 || cfg.batch_tokens == 0 {
        return Err(AnalysisError::Config(format!(
            "window {}, bins {}, batch_tokens {}: each must be positive",
            cfg.window, cfg.bins, cfg.batch_tokens
        )));
    }
    if !(cfg.train_share > 0.0 && cfg.train_share < 1.0) {
        return Err(AnalysisError::Config(format!(
            "train_share {}: the train and test ranges each need part of the run (0 < share < 1)",
            cfg.train_share
        )));
    }
    if latents.is_empty() {
        return Err(AnalysisError::Config(
            "no latents to draw examples for".into(),
        ));
    }
    if let Some(f) = latents.iter().find(|&&f| f as usize >= n) {
        return Err(AnalysisError::Config(format!(
            "latent {f}: the dictionary has {n} latents (0 to {})",
            n - 1
        )));
    }
    Ok(())
}

/// A latent's activation at each token of `span`, from its firings in token order.
fn acts_in(fired: &[(u64, f32)], span: std::ops::Range<u64>) -> Vec<f32> {
    let mut acts = vec![0.0; (span.end - span.start) as usize];
    let from = fired.partition_point(|&(t, _)| t < span.start);
    for &(t, a) in fired[from..].iter().take_while(|&&(t, _)| t < span.end) {
        acts[(t - span.start) as usize] = a;
    }
    acts
}

/// One encoded batch in CSR form on the CPU, from token `first`.
struct Codes {
    first: u64,
    rows: usize,
    cols: Vec<i64>,
    vals: Vec<f32>,
    offsets: Vec<i64>,
}

/// Each watched latent's firings (token, positive activation) over the run, in token order.
struct Firings {
    per_latent: Vec<Vec<(u64, f32)>>,
    tokens: u64,
}

#[allow(clippy::too_many_arguments)]
fn collect(
    dict: &dyn Dictionary,
    run: &Run,
    hook: &str,
    tokens: &TokenTable,
    watched: &[u32],
    cfg: &ExampleConfig,
    device: Device,
    progress: &mut dyn FnMut(u64),
) -> Result<Firings> {
    let _g = tch::no_grad_guard();
    let mut slot = vec![u32::MAX; dict.n_latents()];
    for (i, &f) in watched.iter().enumerate() {
        slot[f as usize] = i as u32;
    }
    let mut per_latent = vec![Vec::new(); watched.len()];
    let total = run.manifest().total_tokens;
    if tokens.token_id.len() as u64 != total {
        return Err(AnalysisError::Data(format!(
            "the run's token tables hold {} tokens, its manifest {total}",
            tokens.token_id.len()
        )));
    }
    let opts = ReadOptions {
        batch_tokens: cfg.batch_tokens,
        ..ReadOptions::default()
    };
    let reader = run.batches(hook, &opts)?;
    // Encoding (libtorch's threads) and collecting overlap, as in the analysis pass: this
    // thread reads and encodes batch i + 1 while the collector, at idle priority as the
    // analysis's folding threads are, scans batch i's codes.
    let (send, recv) = std::sync::mpsc::sync_channel::<Codes>(2);
    let mut collector = |recv: std::sync::mpsc::Receiver<Codes>| {
        for c in recv {
            for r in 0..c.rows {
                let t = c.first + r as u64;
                if !cfg.include_bos && tokens.context_pos[t as usize] == 0 {
                    continue;
                }
                let end = c.offsets.get(r + 1).map_or(c.cols.len(), |&o| o as usize);
                for j in c.offsets[r] as usize..end {
                    let s = slot[c.cols[j] as usize];
                    if s != u32::MAX && c.vals[j] > 0.0 {
                        per_latent[s as usize].push((t, c.vals[j]));
                    }
                }
            }
        }
    };
    let mut read = 0u64;
    let result = std::thread::scope(|scope| {
        let scanning = scope.spawn(move || {
            crate::features::platform::idle_priority();
            collector(recv)
        });
        let result = (|| -> Result<()> {
            for batch in reader {
                let b = batch?;
                if b.token_index.first() != Some(&read) {
                    return Err(AnalysisError::Data(format!(
                        "rows arrived out of order (token {:?} after {read})",
                        b.token_index.first()
                    )));
                }
                let x = Tensor::from_slice(&b.data)
                    .view([b.rows() as i64, b.dim as i64])
                    .to_device(device);
                let codes = dict.encode(&x);
                let cpu = |t: &Tensor| t.to_device(Device::Cpu);
                let sent = send.send(Codes {
                    first: read,
                    rows: b.rows(),
                    cols: Vec::<i64>::try_from(cpu(&codes.cols))?,
                    vals: Vec::<f32>::try_from(cpu(&codes.vals.to_kind(Kind::Float)))?,
                    offsets: Vec::<i64>::try_from(cpu(&codes.offsets))?,
                });
                if sent.is_err() {
                    break; // the collector stopped: its panic surfaces at join
                }
                read += b.rows() as u64;
                progress(read);
            }
            Ok(())
        })();
        drop(send);
        scanning.join().expect("the firing collector panicked");
        result
    });
    result?;
    if read == 0 {
        return Err(AnalysisError::Data(
            "no tokens to draw examples from".into(),
        ));
    }
    Ok(Firings {
        per_latent,
        tokens: read,
    })
}
