//! What training and evaluation write beside a dictionary: the training log (`metrics.jsonl`),
//! the held-out metrics (`metrics.json`) and the evaluation inside the model (`eval.json`).
//! The figures are computed in saescope-sae and saescope-analysis; their form on disk is here,
//! so that readers (the explorer, reports) need not link the code that computes them.

use serde::{Deserialize, Deserializer, Serialize};

/// A figure that may be NaN: JSON has no NaN, so serde_json writes it as `null`, and this reads
/// `null` back as NaN rather than refusing the whole file.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One logged training step: a line of `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogLine {
    /// Steps taken so far.
    pub step: u64,
    /// Training tokens seen so far.
    pub tokens: u64,
    /// The learning rate of this step.
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// The loss minimised: FVU plus the weighted auxiliary loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Fraction of variance unexplained on this batch.
    #[serde(deserialize_with = "nan_if_null")]
    pub fvu: f64,
    /// The auxiliary (AuxK) loss on this batch.
    #[serde(deserialize_with = "nan_if_null")]
    pub aux_loss: f64,
    /// Mean active latents per token.
    #[serde(deserialize_with = "nan_if_null")]
    pub l0: f64,
    /// Fraction of latents that have not fired for `dead_tokens` tokens.
    #[serde(deserialize_with = "nan_if_null")]
    pub dead_fraction: f64,
    /// The gradient's norm before clipping.
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
}

/// Reconstruction and sparsity metrics of one evaluation, with the formula of each
/// (`metrics.json`, and `reconstruction` in `eval.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metrics {
    /// Tokens evaluated.
    pub tokens: u64,
    /// Fraction of variance unexplained: summed squared error over the total variance about
    /// the mean of all tokens.
    #[serde(deserialize_with = "nan_if_null")]
    pub fvu: f64,
    /// 1 − FVU.
    #[serde(deserialize_with = "nan_if_null")]
    pub explained_variance: f64,
    /// 1 − a token's squared error over its squared distance from the batch mean, averaged
    /// over tokens, as older SAELens reports explained variance.
    #[serde(deserialize_with = "nan_if_null")]
    pub explained_variance_legacy: f64,
    /// Mean squared error per value.
    #[serde(deserialize_with = "nan_if_null")]
    pub mse: f64,
    /// Mean active latents per token.
    #[serde(deserialize_with = "nan_if_null")]
    pub l0: f64,
    /// Mean L1 norm of the codes.
    #[serde(deserialize_with = "nan_if_null")]
    pub l1: f64,
    /// Mean cosine between input and reconstruction.
    #[serde(deserialize_with = "nan_if_null")]
    pub cos_sim: f64,
    /// Mean ‖reconstruction‖ / ‖input‖.
    #[serde(deserialize_with = "nan_if_null")]
    pub l2_ratio: f64,
    /// Σ‖x̂‖² / Σ⟨x, x̂⟩: below 1 the reconstructions are shrunk, above 1 inflated.
    #[serde(deserialize_with = "nan_if_null")]
    pub relative_reconstruction_bias: f64,
    /// Fraction of latents that never fired.
    #[serde(deserialize_with = "nan_if_null")]
    pub dead_fraction: f64,
    /// Fraction of latents that fired on more than 10% of tokens.
    #[serde(deserialize_with = "nan_if_null")]
    pub dense_fraction: f64,
    /// Fraction of latents that fired on more than 1% of tokens.
    #[serde(deserialize_with = "nan_if_null")]
    pub freq_over_1_percent: f64,
    /// Features by log10(density + 1e-10), bins of 0.5 from −10 to 0 (the first bin holds the
    /// dead features).
    pub log10_density_histogram: Vec<u64>,
    /// Tokens by number of active latents (index = L0, last bin = that many or more).
    pub l0_histogram: Vec<u64>,
    /// Each figure's definition.
    pub formulas: serde_json::Value,
    /// What makes a figure less reliable than it looks (too few tokens for the dead fraction).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A dictionary spliced into the model over held-out text (`eval.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    /// The hook replaced.
    pub hook: String,
    /// `attn.hook_z` only: the one head ablated in the ablated run.
    pub head: Option<usize>,
    /// Whether each context's BOS position kept its clean value and went unscored.
    pub exclude_bos: bool,
    /// Contexts evaluated.
    pub contexts: u64,
    /// Next-token predictions scored.
    pub predictions: u64,
    /// Cross-entropy of the clean model, nats per prediction.
    #[serde(deserialize_with = "nan_if_null")]
    pub ce_clean: f64,
    /// Cross-entropy with the hook replaced by the reconstruction.
    #[serde(deserialize_with = "nan_if_null")]
    pub ce_spliced: f64,
    /// Cross-entropy with the hook zeroed.
    #[serde(deserialize_with = "nan_if_null")]
    pub ce_ablated: f64,
    /// (ce_ablated − ce_spliced) / (ce_ablated − ce_clean).
    #[serde(deserialize_with = "nan_if_null")]
    pub ce_loss_recovered: f64,
    /// ce_spliced − ce_clean.
    #[serde(deserialize_with = "nan_if_null")]
    pub delta_lm_loss: f64,
    /// KL divergence from the clean next-token distribution, spliced.
    #[serde(deserialize_with = "nan_if_null")]
    pub kl_spliced: f64,
    /// KL divergence from the clean next-token distribution, ablated.
    #[serde(deserialize_with = "nan_if_null")]
    pub kl_ablated: f64,
    /// (kl_ablated − kl_spliced) / kl_ablated.
    #[serde(deserialize_with = "nan_if_null")]
    pub kl_div_score: f64,
    /// Reconstruction metrics over the evaluated (non-excluded) positions.
    pub reconstruction: Metrics,
    /// Each figure's definition.
    pub formulas: serde_json::Value,
}
