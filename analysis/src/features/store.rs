//! `analyze`: the whole feature analysis of a session's dictionary over its run, written as the
//! feature store (`DICT/features/` by default).

use super::{
    AnalyzeConfig, TokenTable, WeightFacts, analyze, decoder_neighbours, head_share, logit_effects,
};
use crate::error::{AnalysisError, Result};
use crate::session::Session;
use saescope_activations::hooks::HookKind;
use saescope_store::features::{FEATURE_STORE_VERSION, Summary, write_feature_store};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What building a feature store did.
pub struct FeatureStoreReport {
    /// Where it was written.
    pub dir: PathBuf,
    /// Its summary (features, tokens, dead, …).
    pub summary: Summary,
    /// The run analysed.
    pub run: PathBuf,
    /// Contexts stored.
    pub contexts: usize,
    /// Seconds in the streaming pass.
    pub pass_seconds: f64,
    /// CPU seconds the folding threads used.
    pub fold_cpu_seconds: f64,
    /// Seconds the encoder waited for the folding.
    pub wait_seconds: f64,
    /// Seconds turning states into rows.
    pub finish_seconds: f64,
}

/// Runs the analysis of the session's dictionary over its run and writes the feature store to
/// `out` (default: the dictionary's `features/`); `progress` gets (tokens done, tokens planned).
pub fn build_feature_store(
    s: &Session,
    cfg: &AnalyzeConfig,
    out: Option<&Path>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<FeatureStoreReport> {
    let t0 = Instant::now();
    if let Some(out) = out
        && saescope_store::remote::is_url(out)
    {
        return Err(AnalysisError::Config(format!(
            "{}: a feature store goes to object storage beside its dictionary (leave out --out, and name the dictionary by its URL), or to a local folder",
            out.display()
        )));
    }
    let opened = &s.opened;
    let (run_dir, run, hook) = s.harvest()?;
    let dictionary = opened.dict.as_dyn();
    let atoms = dictionary.atoms();
    let unembed = s.model.model.unembed_folded();
    let to_res = s.model.model.to_residual(opened.point);
    let weights = WeightFacts {
        neighbours: decoder_neighbours(&atoms, cfg.neighbours),
        logits: logit_effects(
            &atoms,
            to_res.as_ref(),
            &unembed,
            cfg.logit_k,
            cfg.logit_bins,
        ),
        head_share: if opened.point.kind == HookKind::AttnZ {
            let heads = s.model.model.hook_shape(HookKind::AttnZ)[0] as i64;
            Vec::<Vec<f32>>::try_from(head_share(&atoms.to_device(tch::Device::Cpu), heads))?
        } else {
            Vec::new()
        },
    };
    let vocab = s.model.vocabulary();
    let token_str = |i: u32| vocab.get(i as usize).cloned().unwrap_or_default();
    let tokens = TokenTable::read(run)?;
    // The store names context tokens from this vocabulary: refuse a mismatch before the pass.
    if let Some(&id) = tokens.token_id.iter().max()
        && id as usize >= vocab.len()
    {
        return Err(AnalysisError::Data(format!(
            "{}: the run holds token id {id}, but the model's vocabulary has {} tokens; analyse it with the model that harvested it",
            run_dir.display(),
            vocab.len()
        )));
    }
    let total = run.manifest().total_tokens;
    let planned = cfg.max_tokens.unwrap_or(total).min(total);
    progress(0, planned);
    let t_pass = Instant::now();
    let analysis = analyze(
        dictionary,
        run,
        &hook,
        &tokens,
        &weights,
        &token_str,
        cfg,
        s.device,
        &mut |n| progress(n, planned),
    )?;
    let pass_seconds = t_pass.elapsed().as_secs_f64();
    let dir = out.map_or_else(|| opened.dir.features(), Path::to_owned);
    let n = analysis.features.len() as u64;
    let summary = Summary {
        format_version: FEATURE_STORE_VERSION,
        dictionary: opened.dir.path().display().to_string(),
        run: Some(run_dir.display().to_string()),
        hook,
        method: opened.dict.architecture().into(),
        features: n,
        tokens: analysis.tokens,
        dead: analysis.features.iter().filter(|f| f.count == 0).count() as u64,
        log10_density_histogram: analysis.log10_density_histogram.clone(),
        intervals: cfg.intervals,
        per_interval: cfg.per_interval,
        top_contexts: cfg.top,
        window_before: cfg.window_before,
        window_after: cfg.window_after,
        seconds: t0.elapsed().as_secs_f64(),
        definitions: definitions(cfg.exclude_bos),
    };
    write_feature_store(
        &dir,
        &analysis.features,
        &analysis.contexts,
        &analysis.neighbours,
        &vocab,
        &summary,
    )?;
    // A dictionary on object storage gets its feature store there too.
    opened.publish()?;
    Ok(FeatureStoreReport {
        dir,
        summary,
        run: run_dir.to_owned(),
        contexts: analysis.contexts.len(),
        pass_seconds,
        fold_cpu_seconds: analysis.fold_cpu_seconds,
        wait_seconds: analysis.wait_seconds,
        finish_seconds: analysis.finish_seconds,
    })
}

/// Each column's definition, recorded in `summary.json`.
fn definitions(exclude_bos: bool) -> serde_json::Value {
    serde_json::json!({
        "count": format!("tokens with a nonzero activation{}", if exclude_bos { ", BOS positions left out" } else { "" }),
        "density": "count / tokens analysed",
        "act_hist": "nonzero activations in equal-width bins over [0, act_hist_max); act_hist_max is a power of two above max_act",
        "logit_*": "direct logit effect: decoder direction, mapped into the residual stream (attention output projection for attn.hook_z, MLP down projection for mlp.hook_post), times the unembedding with the final norm's weight folded in",
        "contexts.kind": "top: the largest activations, rank 0 first; interval: up to per_interval uniform samples from each of `intervals` equal-width intervals of [0, max_act], interval boundaries snapped to bins at most max_act/intervals wide",
        "contexts.acts": "the feature's activation on each token of the window; focus is the activating token's position in it",
        "neighbours": "the nearest decoder directions by cosine; cooccurrence counts tokens where both fire; jaccard = cooccurrence / (count + count_neighbour - cooccurrence)",
        "head_share": "attn.hook_z dictionaries: each head's share of the decoder direction's L2 norm",
    })
}
