//! The analysis's settings and what it needs to know of every token of the run.

use crate::error::Result;
use saescope_store::Run;

/// Settings, with the defaults SAEDashboard users know.
#[derive(Clone, Debug)]
pub struct AnalyzeConfig {
    /// Top activating contexts kept per feature (default 20).
    pub top: usize,
    /// Equal-width intervals of [0, max activation] that samples are drawn from (default 10).
    pub intervals: usize,
    /// Contexts sampled uniformly from each interval (default 5).
    pub per_interval: usize,
    /// Tokens shown before and after the activating one (within its context).
    pub window_before: usize,
    /// Tokens shown after the activating one (default 4); before + 1 + after must not exceed
    /// [`MAX_WINDOW`].
    pub window_after: usize,
    /// Bins of each feature's activation histogram, equal-width over [0, a power of two above the
    /// max activation] (default 50).
    pub hist_bins: usize,
    /// Nearest decoder directions by cosine listed per feature (default 10).
    pub neighbours: usize,
    /// Tokens listed with the largest and with the smallest direct logit effect (default 10 each).
    pub logit_k: usize,
    /// Bins of each feature's histogram of logit effects over the vocabulary (default 50).
    pub logit_bins: usize,
    /// Rows encoded at once.
    pub batch_tokens: usize,
    /// Analyse at most this many tokens of the run (None: all).
    pub max_tokens: Option<u64>,
    /// Leave each context's BOS position out (its activations are outliers).
    pub exclude_bos: bool,
    /// Seed of the interval sampling, so a rerun picks the same samples (default 0).
    pub seed: u64,
}

impl Default for AnalyzeConfig {
    fn default() -> Self {
        AnalyzeConfig {
            top: 20,
            intervals: 10,
            per_interval: 5,
            window_before: 12,
            window_after: 4,
            hist_bins: 50,
            neighbours: 10,
            logit_k: 10,
            logit_bins: 50,
            batch_tokens: 4096,
            max_tokens: None,
            exclude_bos: true,
            seed: 0,
        }
    }
}

/// Reservoir bins per feature: twice the intervals, so each holds at most max/intervals.
pub(crate) fn reservoir_bins(cfg: &AnalyzeConfig) -> usize {
    2 * cfg.intervals
}

/// The longest window (before + 1 + after) a sample holds; fixed so samples need no heap.
pub const MAX_WINDOW: usize = 32;

/// What the pass needs to know about each token of the run.
pub struct TokenTable {
    /// Each token's id.
    pub token_id: Vec<u32>,
    /// Each token's position in its context.
    pub context_pos: Vec<u32>,
}

impl TokenTable {
    /// Reads every shard's token table.
    pub fn read(run: &Run) -> Result<TokenTable> {
        let mut t = TokenTable {
            token_id: Vec::new(),
            context_pos: Vec::new(),
        };
        for i in 0..run.manifest().shards.len() {
            for r in run.read_tokens(i)? {
                t.token_id.push(r.token_id);
                t.context_pos.push(r.context_pos);
            }
        }
        Ok(t)
    }
}
