//! `saescope analyze`: one streaming pass over a harvest run that builds a dictionary's feature
//! store (statistics, top and interval contexts, logit effects, neighbours, per-head
//! attribution), written as Parquet tables and a JSON summary.

use super::dict;
use crate::progress;
use anyhow::{Context, Result, bail};
use saescope_activations::hooks::HookKind;
use saescope_sae::analyze::{
    AnalyzeConfig, TokenTable, WeightFacts, analyze, decoder_neighbours, head_share, logit_effects,
};
use saescope_store::features::{FEATURE_STORE_VERSION, Summary, write_feature_store};
use std::path::PathBuf;
use std::time::Instant;

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
    let t0 = Instant::now();
    let dict::InModel {
        opened,
        loaded,
        device,
        ..
    } = dict::open_in_model(&a.source)?;
    let Some((run_dir, run)) = &opened.run else {
        bail!(
            "{}: no harvest run found for this dictionary; pass --run",
            a.source.dict.display()
        );
    };
    let hook = opened.point.to_string();
    run.hook(&hook)
        .with_context(|| format!("{} has no hook {hook}", run_dir.display()))?;
    let dictionary = opened.dict.as_dyn();

    let cfg = AnalyzeConfig {
        batch_tokens: a.batch_size,
        max_tokens: a.tokens,
        exclude_bos: !a.include_bos,
        ..AnalyzeConfig::default()
    };
    let atoms = dictionary.atoms();
    let unembed = loaded.model.unembed_folded();
    let to_res = loaded.model.to_residual(opened.point);
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
            let heads = loaded.model.hook_shape(HookKind::AttnZ)[0] as i64;
            Vec::<Vec<f32>>::try_from(head_share(&atoms.to_device(tch::Device::Cpu), heads))?
        } else {
            Vec::new()
        },
    };
    let vocab: Vec<String> = (0..unembed.size()[0] as u32)
        .map(|i| loaded.tokenizer.decode(&[i]).unwrap_or_default())
        .collect();
    let token_str = |i: u32| vocab.get(i as usize).cloned().unwrap_or_default();
    let tokens = TokenTable::read(run)?;
    // The store names context tokens from this vocabulary: refuse a mismatch before the pass.
    if let Some(&id) = tokens.token_id.iter().max()
        && id as usize >= vocab.len()
    {
        bail!(
            "{}: the run holds token id {id}, but the model's vocabulary has {} tokens; analyse it with the model that harvested it",
            run_dir.display(),
            vocab.len()
        );
    }
    let total = a
        .tokens
        .unwrap_or(run.manifest().total_tokens)
        .min(run.manifest().total_tokens);
    let pb = progress::bar(total, "analysing", "tokens");
    let t_pass = Instant::now();
    let analysis = analyze(
        dictionary,
        run,
        &hook,
        &tokens,
        &weights,
        &token_str,
        &cfg,
        device,
        &mut |n| pb.set_position(n),
    )?;
    pb.finish_and_clear();
    let pass_s = t_pass.elapsed().as_secs_f64();
    tracing::debug!(
        "folding used {:.1} s of CPU time on idle-priority threads; the encoder waited {:.2} s for it; rows built in {:.2} s",
        analysis.fold_cpu_seconds,
        analysis.wait_seconds,
        analysis.finish_seconds
    );

    let out = a.out.clone().unwrap_or_else(|| opened.dir.join("features"));
    let n = analysis.features.len() as u64;
    let dead = analysis.features.iter().filter(|f| f.count == 0).count() as u64;
    let summary = Summary {
        format_version: FEATURE_STORE_VERSION,
        dictionary: opened.dir.display().to_string(),
        run: Some(run_dir.display().to_string()),
        hook: hook.clone(),
        method: opened.dict.architecture().into(),
        features: n,
        tokens: analysis.tokens,
        dead,
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
        &out,
        &analysis.features,
        &analysis.contexts,
        &analysis.neighbours,
        &vocab,
        &summary,
    )
    .with_context(|| format!("writing the feature store to {}", out.display()))?;
    println!(
        "analysed {} features of {} over {} tokens of {} in {:.1} s ({:.0} tokens/s, {:.0} features/s in the pass)",
        n,
        hook,
        analysis.tokens,
        run_dir.display(),
        pass_s,
        analysis.tokens as f64 / pass_s,
        n as f64 / pass_s,
    );
    println!(
        "  {dead} dead ({:.1}%); {} contexts; feature store in {}",
        100.0 * dead as f64 / n.max(1) as f64,
        analysis.contexts.len(),
        out.display()
    );
    Ok(())
}

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
