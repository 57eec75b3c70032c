//! Turning the folded states into the feature store's rows: statistics, contexts (top and
//! interval samples), neighbours with co-occurrence and Jaccard, logit effects.

use super::config::{AnalyzeConfig, TokenTable, reservoir_bins};
use super::pass::{Cooccurrence, FeatureState, Sample, merge_reservoirs, mix};
use super::weights::WeightFacts;
use rayon::prelude::*;
use saescope_store::features::{ContextKind, Contexts, FeatureRow, NeighbourRow, Window};

/// Everything a pass produced, ready for [`saescope_store::features::write_feature_store`].
pub struct Analysis {
    /// One row per feature, in feature order: counts, density, activation and logit statistics.
    pub features: Vec<FeatureRow>,
    /// Top and interval windows, sorted by feature; token text is added when the store is
    /// written.
    pub contexts: Contexts,
    /// Each feature's nearest decoder directions, with co-occurrence and Jaccard.
    pub neighbours: Vec<NeighbourRow>,
    /// Tokens analysed, BOS positions included: the denominator of every density.
    pub tokens: u64,
    /// Features by log10(density + 1e-10), 20 bins of 0.5 from -10 to 0.
    pub log10_density_histogram: Vec<u64>,
    /// Wall time spent folding codes into the states (on idle-priority threads, overlapping
    /// the encoding, so it includes time spent waiting for a core).
    pub fold_seconds: f64,
    /// CPU time the folding threads used.
    pub fold_cpu_seconds: f64,
    /// Wall time between the last batch encoded and the last row folded.
    pub drain_seconds: f64,
    /// Wall time the encoding thread waited for the folder to take a batch: near zero when the
    /// analysis keeps up with the encoder.
    pub wait_seconds: f64,
    /// Wall time turning the states into rows.
    pub finish_seconds: f64,
}

/// What folding leaves: the feature states and their flat tables (see [`Pass`]).
pub(crate) struct Folded {
    pub(crate) states: Vec<FeatureState>,
    pub(crate) hist: Vec<u32>,
    pub(crate) seen: Vec<u64>,
}

/// Turns the feature states into rows, one feature per rayon task. Each feature's windows go
/// into a small column table of their own, appended in feature order at the end.
pub(crate) fn finish(
    folded: Folded,
    cooccur: &Cooccurrence,
    weights: &WeightFacts,
    tokens: &TokenTable,
    token_str: &(dyn Fn(u32) -> String + Sync),
    cfg: &AnalyzeConfig,
    analysed: u64,
) -> Analysis {
    let context = |out: &mut Contexts, f: u32, kind: ContextKind, rank: usize, s: &Sample| {
        let span = s.start as usize..s.start as usize + s.len as usize;
        out.push(Window {
            feature: f,
            kind,
            rank: rank as u16,
            token_index: s.token,
            activation: s.value,
            focus: (s.token - s.start) as u16,
            token_ids: &tokens.token_id[span],
            acts: s.acts(),
        });
    };
    let (hb, rbins) = (cfg.hist_bins, reservoir_bins(cfg));
    let Folded { states, hist, seen } = folded;
    let one = |(fi, mut s): (usize, FeatureState)| {
        let f = fi as u32;
        let seen = &seen[fi * rbins..(fi + 1) * rbins];
        let windows = cfg.top + cfg.intervals * cfg.per_interval;
        let window_len = cfg.window_before + cfg.window_after + 1;
        let mut contexts = Contexts::with_capacity(windows, windows * window_len);
        s.top.sort_by(|a, b| b.value.total_cmp(&a.value));
        for (rank, smp) in s.top.iter().enumerate() {
            context(&mut contexts, f, ContextKind::Top, rank, smp);
        }
        // Reservoir bins to intervals of [0, max] by their centres.
        if s.count > 0 {
            let mut per: Vec<(u64, Vec<Sample>)> = vec![(0, Vec::new()); cfg.intervals];
            for (b, res) in std::mem::take(&mut s.reservoirs).into_iter().enumerate() {
                let centre = (b as f32 + 0.5) * s.range / rbins as f32;
                let i = ((centre / s.max * cfg.intervals as f32) as usize).min(cfg.intervals - 1);
                let (c, old) = std::mem::take(&mut per[i]);
                let key = cfg.seed ^ mix(((f as u64) << 16) | b as u64);
                per[i] = (
                    c + seen[b],
                    merge_reservoirs((c, old), (seen[b], res), cfg.per_interval, key),
                );
            }
            for (i, (_, mut smp)) in per.into_iter().enumerate() {
                smp.sort_by(|a, b| b.value.total_cmp(&a.value));
                for (rank, x) in smp.iter().enumerate() {
                    context(&mut contexts, f, ContextKind::Interval(i as u8), rank, x);
                }
            }
        }
        let neighbours: Vec<NeighbourRow> = weights.neighbours[fi]
            .iter()
            .enumerate()
            .map(|(rank, &(g, cos))| NeighbourRow {
                feature: f,
                rank: rank as u8,
                neighbour: g,
                cosine: cos,
                cooccurrence: cooccur.get(fi, rank),
                // Filled in below, once every count is known.
                jaccard: 0.0,
            })
            .collect();
        let le = weights.logits.get(fi).cloned().unwrap_or_default();
        let names = |v: &[(u32, f32)]| v.iter().map(|&(i, _)| token_str(i)).collect();
        let row = FeatureRow {
            feature: f,
            count: s.count,
            density: s.count as f64 / analysed as f64,
            mean_act: if s.count > 0 {
                (s.sum / s.count as f64) as f32
            } else {
                0.0
            },
            max_act: s.max,
            act_hist: hist[fi * hb..(fi + 1) * hb].to_vec(),
            act_hist_max: s.range,
            logit_top_ids: le.top.iter().map(|p| p.0).collect(),
            logit_top_values: le.top.iter().map(|p| p.1).collect(),
            logit_top_tokens: names(&le.top),
            logit_bottom_ids: le.bottom.iter().map(|p| p.0).collect(),
            logit_bottom_values: le.bottom.iter().map(|p| p.1).collect(),
            logit_bottom_tokens: names(&le.bottom),
            logit_hist: le.hist,
            logit_hist_min: le.min,
            logit_hist_max: le.max,
            head_share: weights.head_share.get(fi).cloned().unwrap_or_default(),
        };
        (row, contexts, neighbours)
    };
    let parts: Vec<_> = states.into_par_iter().enumerate().map(one).collect();
    let mut features = Vec::with_capacity(parts.len());
    let mut contexts = Contexts::with_capacity(
        parts.iter().map(|p| p.1.len()).sum(),
        parts.iter().map(|p| p.1.tokens()).sum(),
    );
    let mut neighbours = Vec::new();
    let mut log_hist = vec![0u64; 20];
    for (row, ctx, nb) in parts {
        let bin = (((row.density + 1e-10).log10() + 10.0) / 0.5)
            .floor()
            .clamp(0.0, 19.0) as usize;
        log_hist[bin] += 1;
        features.push(row);
        contexts.append(&ctx);
        neighbours.extend(nb);
    }
    for nb in &mut neighbours {
        let union = features[nb.feature as usize].count + features[nb.neighbour as usize].count
            - nb.cooccurrence;
        nb.jaccard = if union > 0 {
            nb.cooccurrence as f32 / union as f32
        } else {
            0.0
        };
    }
    Analysis {
        features,
        contexts,
        neighbours,
        tokens: analysed,
        log10_density_histogram: log_hist,
        fold_seconds: 0.0,
        fold_cpu_seconds: 0.0,
        drain_seconds: 0.0,
        wait_seconds: 0.0,
        finish_seconds: 0.0,
    }
}
