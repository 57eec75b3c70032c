//! Export of a feature store to the dashboard JSON that Neuronpedia imports (SAEDashboard's
//! `NeuronpediaDashboardBatch`: `{model_id, layer, sae_set, features: [...]}`), so a user can
//! publish saescope's analysis there.
//!
//! A feature with explanations carries them as `explanations: [{description,
//! explanationModelName, typeName}]`, the field names of Neuronpedia's explanation records, the
//! type naming what each was made from, and with its scores (`saescope score`, the feature's
//! own explanation) as `scores: [{value, explanationScoreTypeName, explanationScoreModelName,
//! jsonDetails}]`, typed `saescope_<scorer>`, the value [`ScoreRow::headline`] and the details
//! every metric of the row as JSON.
//!
//! Fields saescope does not compute (correlated neurons, and correlated features by Pearson
//! correlation) are written as empty lists, which Neuronpedia shows as absent.

use crate::explanations::{Evidence, ExplanationRow};
use crate::features::{ContextKind, FeatureRow, FeatureStore};
use crate::scores::{Control, ScoreRow};
use serde_json::{Value, json};
use std::collections::HashMap;

/// What Neuronpedia needs besides the store.
pub struct ExportInfo {
    /// Neuronpedia's id for the model whose activations the dictionary reads.
    pub model_id: String,
    /// The layer (block index) of the dictionary's hook point.
    pub layer: usize,
    /// Neuronpedia's name for the set of dictionaries this one is published in.
    pub sae_set: String,
    /// Name of the corpus the contexts came from; may be empty.
    pub dataset: String,
    /// Tokens per prompt (the run's context length); `n_prompts_total` is tokens analysed / this.
    pub tokens_per_prompt: usize,
    /// Per feature, the decoder entries with the largest |value|: (index, value, share of the
    /// row's L1 norm). Empty when not known.
    pub neuron_alignment: Vec<Vec<(u32, f32, f32)>>,
    /// Explanations by latent, one row per kind of evidence (rows without one are left out).
    pub explanations: HashMap<u32, Vec<ExplanationRow>>,
    /// Scores by latent (`scores.parquet`); those of each latent's own explanations are
    /// exported with them.
    pub scores: HashMap<u32, Vec<ScoreRow>>,
}

/// The score records of explanation `e`: its latent's scores of this very explanation (not of
/// one it replaced) from the same evidence.
fn score_records(e: &ExplanationRow, scores: Option<&Vec<ScoreRow>>) -> Vec<Value> {
    scores
        .into_iter()
        .flatten()
        .filter(|s| s.control == Control::Real && s.evidence == e.evidence)
        .filter(|s| e.explanation.as_ref() == Some(&s.explanation))
        .filter_map(|s| {
            Some(json!({
                "value": s.headline()?,
                "explanationScoreTypeName": format!("saescope_{}", s.scorer),
                "explanationScoreModelName": explainer_model(&s.model),
                "jsonDetails": json!({
                    "windows": s.windows, "valid": s.valid, "failed": s.failed,
                    "balanced_accuracy": s.balanced_accuracy,
                    "balanced_accuracy_all": s.balanced_accuracy_all,
                    "precision": s.precision, "recall": s.recall, "f1": s.f1,
                    "auc": s.auc, "value": s.value,
                    "bin_recall": finite(&s.bin_recall), "bin_auc": finite(&s.bin_auc),
                    "bin_value": finite(&s.bin_value),
                }).to_string(),
            }))
        })
        .collect()
}

/// NaN (a bin without a score) as null, which JSON can hold.
fn finite(xs: &[f32]) -> Vec<Option<f32>> {
    xs.iter().map(|x| x.is_finite().then_some(*x)).collect()
}

/// Neuronpedia's explanation type for explanations made by `saescope explain`: from activating
/// windows, or (`--output-side`) from what the feature does when pushed.
pub fn explanation_type(evidence: Evidence) -> &'static str {
    match evidence {
        Evidence::Activations => "saescope_acts",
        Evidence::Effects => "saescope_effects",
    }
}

/// The explainer's model as Neuronpedia names it: the model part of `server <URL> <model>`
/// or the file name of `local <model file>`.
fn explainer_model(explainer: &str) -> &str {
    let last = explainer.rsplit(' ').next().unwrap_or(explainer);
    last.rsplit('/').next().unwrap_or(last)
}

/// Centres and heights of equal-width bins over [lo, hi].
fn bars(counts: &[u32], lo: f32, hi: f32) -> (Vec<f32>, Vec<u32>) {
    let w = (hi - lo) / counts.len().max(1) as f32;
    (
        (0..counts.len())
            .map(|i| lo + (i as f32 + 0.5) * w)
            .collect(),
        counts.to_vec(),
    )
}

/// Fraction of a feature's nonzero activations in [lo, hi), read off its histogram.
fn fraction_between(row: &FeatureRow, lo: f32, hi: f32) -> f32 {
    let total: u64 = row.act_hist.iter().map(|&c| c as u64).sum();
    if total == 0 || row.act_hist_max <= 0.0 {
        return 0.0;
    }
    let n = row.act_hist.len();
    let w = row.act_hist_max / n as f32;
    let mut mass = 0.0f32;
    for (i, &c) in row.act_hist.iter().enumerate() {
        let (a, b) = (i as f32 * w, (i + 1) as f32 * w);
        let overlap = (b.min(hi) - a.max(lo)).max(0.0);
        mass += c as f32 * overlap / w;
    }
    mass / total as f32
}

/// The dashboard batch for every feature of `store`.
pub fn dashboard_batch(store: &FeatureStore, info: &ExportInfo) -> Value {
    let intervals = store.summary.intervals.max(1);
    let mut features = Vec::with_capacity(store.features.len());
    let mut contexts = store.contexts.iter().peekable();
    for row in &store.features {
        let (freq_values, freq_heights) = bars(&row.act_hist, 0.0, row.act_hist_max);
        let (logit_values, logit_heights) =
            bars(&row.logit_hist, row.logit_hist_min, row.logit_hist_max);
        let mut activations = Vec::new();
        // Contexts are stored sorted by feature.
        while let Some(c) = contexts.next_if(|c| c.feature <= row.feature) {
            if c.feature != row.feature {
                continue;
            }
            let (lo, hi) = match c.kind {
                ContextKind::Top => (0.0, row.max_act),
                ContextKind::Interval(i) => {
                    let w = row.max_act / intervals as f32;
                    (i as f32 * w, (i + 1) as f32 * w)
                }
            };
            let contains = match c.kind {
                // The top group is marked as SAEDashboard marks it: no interval.
                ContextKind::Top => -1.0,
                ContextKind::Interval(_) => fraction_between(row, lo, hi),
            };
            activations.push(json!({
                "bin_min": if matches!(c.kind, ContextKind::Top) { -1.0 } else { lo },
                "bin_max": hi,
                "bin_contains": contains,
                "tokens": c.tokens,
                "values": c.acts,
                "qualifying_token_index": c.focus,
            }));
        }
        let align = info
            .neuron_alignment
            .get(row.feature as usize)
            .cloned()
            .unwrap_or_default();
        let mut feature = json!({
            "feature_index": row.feature,
            "neuron_alignment_indices": align.iter().map(|a| a.0).collect::<Vec<_>>(),
            "neuron_alignment_values": align.iter().map(|a| a.1).collect::<Vec<_>>(),
            "neuron_alignment_l1": align.iter().map(|a| a.2).collect::<Vec<_>>(),
            "correlated_neurons_indices": [],
            "correlated_neurons_l1": [],
            "correlated_neurons_pearson": [],
            "correlated_features_indices": [],
            "correlated_features_l1": [],
            "correlated_features_pearson": [],
            "neg_str": row.logit_bottom_tokens,
            "neg_values": row.logit_bottom_values,
            "pos_str": row.logit_top_tokens,
            "pos_values": row.logit_top_values,
            "frac_nonzero": row.density,
            "freq_hist_data_bar_values": freq_values,
            "freq_hist_data_bar_heights": freq_heights,
            "logits_hist_data_bar_values": logit_values,
            "logits_hist_data_bar_heights": logit_heights,
            "n_prompts_total": store.summary.tokens / info.tokens_per_prompt.max(1) as u64,
            "n_tokens_in_prompt": info.tokens_per_prompt,
            "dataset": info.dataset,
            "decoder_weights_dist": row.head_share,
            "activations": activations,
        });
        let explained: Vec<Value> = info
            .explanations
            .get(&row.feature)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let mut record = json!({
                    "description": e.explanation.as_ref()?,
                    "explanationModelName": explainer_model(&e.explainer),
                    "typeName": explanation_type(e.evidence),
                });
                let scores = score_records(e, info.scores.get(&row.feature));
                if !scores.is_empty() {
                    record["scores"] = Value::Array(scores);
                }
                Some(record)
            })
            .collect();
        if !explained.is_empty() {
            feature["explanations"] = Value::Array(explained);
        }
        features.push(feature);
    }
    json!({
        "model_id": info.model_id,
        "layer": info.layer,
        "sae_set": info.sae_set,
        "features": features,
    })
}
