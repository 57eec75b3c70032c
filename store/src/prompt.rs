//! The prompt view's data: what `saescope inspect --json` prints and what the explorer's prompt
//! and heads views show. saescope-analysis computes it inside the model; it is plain data here
//! so that the explorer can show it without linking the model runtime.

use crate::features::FeatureRow;
use serde::{Deserialize, Serialize};

/// One feature active on a token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveFeature {
    /// The feature's index in the dictionary.
    pub feature: u32,
    /// Its activation on the token.
    pub activation: f32,
    /// Fraction of the feature's nonzero activations (in the feature store) at or below this one.
    pub quantile: Option<f32>,
}

/// One token of the prompt and its strongest features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    /// Position in the prompt, BOS (when prepended) being 0.
    pub position: usize,
    /// The token's id.
    pub token_id: u32,
    /// The token's text.
    pub token: String,
    /// The most active features, strongest first.
    pub features: Vec<ActiveFeature>,
}

/// A dictionary's features on every token of one prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptView {
    /// The hook the dictionary reads.
    pub hook: String,
    /// The prompt's tokens in order.
    pub tokens: Vec<TokenView>,
}

/// Direct feature attribution of one feature at one destination token, by head and source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    /// The feature attributed.
    pub feature: u32,
    /// The destination token's position.
    pub dest: usize,
    /// The feature's pre-activation at `dest`.
    pub pre_activation: f32,
    /// b_enc[f] − b_dec · w[f]: the part no head contributes; Σ by_head_source = pre − constant.
    pub constant: f32,
    /// `[head][source]`: A_h[dest, src] · (v_h[src] · w[f, head block]).
    pub by_head_source: Vec<Vec<f32>>,
    /// The tokens up to and including `dest`, as text.
    pub tokens: Vec<String>,
}

/// Where `v` falls among a feature's nonzero activations, read off its histogram (linear within
/// a bin).
pub fn quantile(row: &FeatureRow, v: f32) -> Option<f32> {
    let total: u64 = row.act_hist.iter().map(|&c| c as u64).sum();
    if total == 0 || row.act_hist_max <= 0.0 {
        return None;
    }
    let bins = row.act_hist.len();
    let x = (v / row.act_hist_max * bins as f32).clamp(0.0, bins as f32);
    let whole = (x.floor() as usize).min(bins);
    let below: u64 = row.act_hist[..whole].iter().map(|&c| c as u64).sum();
    let partial = if whole < bins {
        row.act_hist[whole] as f32 * (x - whole as f32)
    } else {
        0.0
    };
    Some(((below as f32 + partial) / total as f32).clamp(0.0, 1.0))
}
