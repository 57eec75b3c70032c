//! Small synthetic runs for the explorer's tests and benchmark: a harvest run, a residual
//! dictionary and an attention-output dictionary, each with a feature store, and IOI circuit
//! results whose every value
//! follows from the feature number, so a test can say what the screen must show.

use saescope_store::dictionary::{EvalReport, Metrics};
use saescope_store::features::{
    ContextKind, Contexts, FEATURE_STORE_VERSION, FeatureRow, NeighbourRow, Summary, Window,
    write_feature_store,
};
use saescope_store::{DictDir, Dtype, RunWriter, WriterOptions, synthetic};
use std::path::{Path, PathBuf};

/// What [`make_run`] builds.
pub struct FixtureSpec {
    /// Features of each dictionary.
    pub features: usize,
    /// Top contexts per feature (each also gets one sample in each of 2 intervals).
    pub contexts: usize,
    /// Heads of the attention-output dictionary.
    pub heads: usize,
}

/// The residual dictionary's name.
pub const RESID_DICT: &str = "blocks.1.hook_resid_post-topk";
/// The attention-output dictionary's name.
pub const Z_DICT: &str = "blocks.2.attn.hook_z-topk";
/// The model the fixture claims.
pub const MODEL_NAME: &str = "synthetic";

/// The word feature `f`'s first promoted token is (search finds features by it).
pub fn top_token(f: u32) -> String {
    format!(" word{}", f % 97)
}

/// Feature `f`'s density: spread over ten orders of magnitude so every density bar has features.
pub fn density(f: u32, n: usize) -> f64 {
    10f64.powf(-9.75 + 9.5 * f as f64 / n.max(1) as f64)
}

/// The head that carries most of feature `f`'s decoder norm in the attention dictionary.
pub fn main_head(f: u32, heads: usize) -> usize {
    (f as usize * 7 + 3) % heads.max(1)
}

/// Writes a run with both dictionaries under `dir` and returns the run directory.
pub fn make_run(dir: &Path, spec: &FixtureSpec) -> PathBuf {
    let run = dir.join("run");
    let mut w = RunWriter::create(
        &run,
        synthetic::spec(
            vec![synthetic::hook(
                "blocks.1.hook_resid_post",
                &[8],
                Dtype::F32,
            )],
            16,
        ),
        &WriterOptions::default(),
    )
    .expect("run");
    synthetic::append_until(&mut w, 256, 256, |_| {}).expect("tokens");
    w.finish().expect("finish");
    for (name, hook, heads) in [
        (RESID_DICT, "blocks.1.hook_resid_post", 0),
        (Z_DICT, "blocks.2.attn.hook_z", spec.heads),
    ] {
        let d = DictDir::in_run(&run, name);
        std::fs::create_dir_all(d.path()).expect("dict dir");
        let cfg = serde_json::json!({
            "architecture": "topk", "d_in": 8, "d_sae": spec.features, "k": 4,
            "metadata": {"hook_name": hook, "model_name": MODEL_NAME},
        });
        std::fs::write(d.config(), cfg.to_string()).expect("cfg");
        let m = metrics(0.125, 4.0, 0.0625);
        std::fs::write(d.metrics(), serde_json::to_string(&m).expect("json")).expect("metrics");
        let eval = EvalReport {
            hook: hook.to_owned(),
            head: None,
            exclude_bos: true,
            contexts: 8,
            predictions: 1016,
            ce_clean: 3.0,
            ce_spliced: 3.25,
            ce_ablated: 5.0,
            ce_loss_recovered: 0.875,
            delta_lm_loss: 0.25,
            kl_spliced: 0.2,
            kl_ablated: 2.0,
            kl_div_score: 0.9,
            reconstruction: m,
            formulas: serde_json::Value::Null,
        };
        std::fs::write(d.eval(), serde_json::to_string(&eval).expect("json")).expect("eval");
        let log: String = (1..=20)
            .map(|i| {
                format!(
                    "{{\"step\":{i},\"tokens\":{},\"loss\":{},\"fvu\":{},\"l0\":4.0,\"dead_fraction\":0.0}}\n",
                    i * 1024,
                    1.0 / i as f64,
                    1.0 / i as f64
                )
            })
            .collect();
        std::fs::write(d.training_log(), log).expect("log");
        write_store(&d.features(), spec, heads, hook);
    }
    write_circuit(&run, spec.heads);
    run
}

/// Head (layer, head)'s code score in the fixture's IOI results: 3 layers of `heads` heads.
pub fn code_score(layer: u32, head: u32) -> f64 {
    f64::from((layer * 5 + head * 3) % 7)
}

/// Writes IOI circuit results for 3 scored layers of `heads` heads in a 4-layer model: code
/// scores from [`code_score`], ablation effects of −score / 10, path-patched effects of
/// −score / 20 on layer 2, one path-patched pair below sixty others, and two prompts.
fn write_circuit(run: &Path, heads: usize) {
    use saescope_store::circuits::*;
    let dir = CircuitDir::in_run(run, "ioi");
    std::fs::create_dir_all(dir.path()).expect("circuit dir");
    let rows: Vec<HeadRow> = (0..3u32)
        .flat_map(|l| (0..heads as u32).map(move |h| (l, h)))
        .map(|(layer, head)| {
            let score = code_score(layer, head);
            HeadRow {
                layer,
                head,
                code_score: score,
                code_score_std: 0.5,
                normalised: score / 7.0,
                edge_score: score,
                probability: 0.0,
                rank: 1,
                ablation_effect: Some(-score / 10.0),
                direct_effect: (layer == 2).then_some(-score / 20.0),
                in_circuit: score >= 5.0,
            }
        })
        .collect();
    write_heads(&dir, &rows).expect("heads");
    let edge = EdgeRow {
        from_layer: 0,
        from_head: 1,
        to_layer: 2,
        to_head: 1,
        score: 2.5,
        path_effect: Some(-0.125),
    };
    // Sixty better-scoring pairs that were not path-patched, ahead of it in the table.
    let mut edges: Vec<EdgeRow> = (0..60u32)
        .map(|i| EdgeRow {
            from_layer: 0,
            from_head: i % heads as u32,
            to_layer: 1,
            to_head: (i / heads as u32) % heads as u32,
            score: 3.0 + f64::from(i) / 100.0,
            path_effect: None,
        })
        .collect();
    edges.sort_by(|a, b| b.score.total_cmp(&a.score));
    edges.push(edge);
    write_edges(&dir, &edges).expect("edges");
    let prompts: Vec<PromptRow> = [(" Mary", 2.5), (" John", -0.5)]
        .iter()
        .enumerate()
        .map(|(i, (predicted, diff))| PromptRow {
            prompt: i as u32,
            text: format!("When Mary and John went to the store, John gave a drink to ({i})"),
            corrupted: "When Mary and John went to the store, Anna gave a drink to".into(),
            answer: " Mary".into(),
            wrong: " John".into(),
            predicted: (*predicted).into(),
            logit_diff: *diff,
            corrupted_logit_diff: 0.0,
        })
        .collect();
    write_prompts(&dir, &prompts).expect("prompts");
    write_codes(&dir, &[]).expect("codes");
    let summary = CircuitSummary {
        format: "saescope.circuits".into(),
        format_version: FORMAT_VERSION,
        task: "ioi".into(),
        model: MODEL_NAME.into(),
        prompts: 2,
        layers: 4,
        heads_per_layer: heads,
        scored_layers: Some(vec![0, 1, 2]),
        accuracy: 0.5,
        logit_diff: 1.0,
        corrupted_logit_diff: 0.0,
        config: serde_json::json!({}),
        ground_truth: "mean-ablation".into(),
        agreement: vec![Agreement {
            circuit: "|mean-ablation effect| > 0.450".into(),
            cutoff: Some(0.45),
            heads: rows.iter().filter(|r| r.in_circuit).count(),
            node_auc: Some(Spread::of(vec![0.7, 0.8])),
            normalised_auc: None,
            edge_auc: None,
        }],
        spearman: None,
        fvu: Spread::of(vec![0.5]),
        runtimes: Runtimes {
            code_ranking: 2.0,
            ablation_sweep: Some(50.0),
            ..Runtimes::default()
        },
        path_patching: Some(PathPatching {
            chosen_by: "|mean-ablation effect|".into(),
            candidates: vec![(2, 1), (0, 1)],
            pairs: 1,
            agreement: vec![EdgeAgreement {
                cutoff: 0.1,
                edges: 1,
                edge_auc: None,
            }],
            spearman: None,
            seconds: 3.0,
        }),
    };
    write_summary(&dir, &summary).expect("summary");
}

/// Held-out metrics with the three figures the overview shows.
fn metrics(fvu: f64, l0: f64, dead_fraction: f64) -> Metrics {
    Metrics {
        tokens: 4096,
        fvu,
        explained_variance: 1.0 - fvu,
        explained_variance_legacy: 1.0 - fvu,
        mse: fvu,
        l0,
        l1: l0,
        cos_sim: 0.9,
        l2_ratio: 0.95,
        relative_reconstruction_bias: 1.0,
        dead_fraction,
        dense_fraction: 0.0,
        freq_over_1_percent: 0.5,
        log10_density_histogram: vec![0; 20],
        l0_histogram: vec![0; 8],
        formulas: serde_json::Value::Null,
        warnings: Vec::new(),
    }
}

/// Writes a feature store of `spec.features` features to `dir`.
pub fn write_store(dir: &Path, spec: &FixtureSpec, heads: usize, hook: &str) {
    let n = spec.features;
    let features: Vec<FeatureRow> = (0..n as u32)
        .map(|f| {
            let max = 1.0 + (f % 13) as f32;
            let mut head_share = vec![0.0; heads];
            if heads > 0 {
                let h = main_head(f, heads);
                for (i, s) in head_share.iter_mut().enumerate() {
                    *s = if i == h {
                        0.6
                    } else {
                        0.4 / (heads - 1).max(1) as f32
                    };
                }
            }
            FeatureRow {
                feature: f,
                count: (density(f, n) * 1e6) as u64,
                density: density(f, n),
                mean_act: max / 2.0,
                max_act: max,
                act_hist: (0..50).map(|i| (50 - i) as u32).collect(),
                act_hist_max: max,
                logit_top_ids: vec![f, f + 1],
                logit_top_values: vec![0.5 + (f % 7) as f32, 0.25],
                logit_top_tokens: vec![top_token(f), " other".into()],
                logit_bottom_ids: vec![f + 2],
                logit_bottom_values: vec![-0.5],
                logit_bottom_tokens: vec![" below".into()],
                logit_hist: vec![1, 4, 9, 4, 1],
                logit_hist_min: -1.0,
                logit_hist_max: 1.0,
                head_share,
            }
        })
        .collect();
    // Each window reads " the", " cat", a token naming its feature and sample, "\n".
    let mut vocab: Vec<String> = [" the", " cat", "\n"].map(String::from).to_vec();
    let mut contexts = Contexts::default();
    for f in 0..n as u32 {
        let max = features[f as usize].max_act;
        let mut window = |kind, rank: u16, act: f32| {
            vocab.push(match kind {
                ContextKind::Top => format!(" ctx{f}r{rank}"),
                ContextKind::Interval(i) => format!(" ctx{f}i{i}"),
            });
            contexts.push(Window {
                feature: f,
                kind,
                rank,
                token_index: f as u64 * 100 + rank as u64,
                activation: act,
                focus: 2,
                token_ids: &[0, 1, vocab.len() as u32 - 1, 2],
                acts: &[0.0, act / 2.0, act, 0.0],
            });
        };
        for rank in 0..spec.contexts as u16 {
            window(ContextKind::Top, rank, max - rank as f32 * 0.01);
        }
        window(ContextKind::Interval(0), 0, max * 0.2);
        window(ContextKind::Interval(1), 0, max * 0.7);
    }
    let neighbours: Vec<NeighbourRow> = (0..n as u32)
        .flat_map(|f| {
            (0..3u8).map(move |r| NeighbourRow {
                feature: f,
                rank: r,
                neighbour: (f + 1 + r as u32) % n as u32,
                cosine: 0.9 - 0.1 * r as f32,
                cooccurrence: 3,
                jaccard: 0.25,
            })
        })
        .collect();
    let mut hist = vec![0u64; 20];
    for r in &features {
        hist[(((r.density + 1e-10).log10() + 10.0) / 0.5)
            .floor()
            .clamp(0.0, 19.0) as usize] += 1;
    }
    let summary = Summary {
        format_version: FEATURE_STORE_VERSION,
        dictionary: dir
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        run: None,
        hook: hook.into(),
        method: "topk".into(),
        features: n as u64,
        tokens: 1_000_000,
        dead: 0,
        log10_density_histogram: hist,
        intervals: 2,
        per_interval: 1,
        top_contexts: spec.contexts,
        window_before: 2,
        window_after: 1,
        seconds: 0.0,
        definitions: serde_json::json!({}),
    };
    write_feature_store(dir, &features, &contexts, &neighbours, &vocab, &summary).expect("store");
}
