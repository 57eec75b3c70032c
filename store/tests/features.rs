//! The feature store's tables read back as written, and an incomplete store is refused.

use saescope_store::features::*;
use saescope_store::scores::Control;
use std::path::Path;

/// Token names by id, for the contexts' windows.
fn score_row(
    latent: u32,
    scorer: &str,
    control: Control,
    balanced_accuracy: Option<f64>,
    value: Option<f64>,
) -> saescope_store::scores::ScoreRow {
    saescope_store::scores::ScoreRow {
        latent,
        scorer: scorer.into(),
        control,
        evidence: saescope_store::explanations::Evidence::Activations,
        explanation_of: latent,
        explanation: "plural nouns".into(),
        model: "server http://127.0.0.1:8080/v1 org/scorer-1b".into(),
        settings: "{}".into(),
        windows: 10,
        valid: 10,
        failed: 0,
        balanced_accuracy,
        balanced_accuracy_all: balanced_accuracy,
        precision: None,
        recall: None,
        f1: None,
        f1_all: None,
        auc: Some(0.9),
        bin_recall: vec![1.0, f32::NAN],
        bin_auc: vec![],
        value,
        bin_value: vec![],
    }
}

fn vocab() -> Vec<String> {
    ["<s>", "a", "b", "c", "d"].map(String::from).to_vec()
}

fn rows() -> (Vec<FeatureRow>, Contexts, Vec<NeighbourRow>, Summary) {
    let features: Vec<FeatureRow> = (0..5u32)
        .map(|f| FeatureRow {
            feature: f,
            count: f as u64 * 10,
            density: f as f64 / 100.0,
            mean_act: 1.5 * f as f32,
            max_act: 3.0 * f as f32,
            act_hist: (0..50).map(|i| i * f).collect(),
            act_hist_max: 4.0,
            logit_top_ids: vec![f, f + 1],
            logit_top_values: vec![0.5, 0.25],
            logit_top_tokens: vec![format!(" tok{f}"), "é\n".into()],
            logit_bottom_ids: vec![7],
            logit_bottom_values: vec![-1.0],
            logit_bottom_tokens: vec!["x".into()],
            logit_hist: vec![1, 2, 3],
            logit_hist_min: -1.0,
            logit_hist_max: 0.5,
            head_share: if f % 2 == 0 { vec![0.25, 0.75] } else { vec![] },
        })
        .collect();
    let mut contexts = Contexts::default();
    contexts.push(Window {
        feature: 0,
        kind: ContextKind::Top,
        rank: 0,
        token_index: 1234,
        activation: 2.5,
        focus: 2,
        token_ids: &[1, 2, 3],
        acts: &[0.0, 0.5, 2.5],
    });
    contexts.push(Window {
        feature: 3,
        kind: ContextKind::Interval(9),
        rank: 4,
        token_index: 99,
        activation: 0.1,
        focus: 0,
        token_ids: &[4],
        acts: &[0.1],
    });
    let neighbours = vec![NeighbourRow {
        feature: 1,
        rank: 0,
        neighbour: 4,
        cosine: 0.9,
        cooccurrence: 3,
        jaccard: 0.1,
    }];
    let summary = Summary {
        format_version: FEATURE_STORE_VERSION,
        dictionary: "d".into(),
        run: None,
        hook: "blocks.0.hook_resid_post".into(),
        method: "topk".into(),
        features: 5,
        tokens: 100,
        dead: 1,
        log10_density_histogram: vec![1; 20],
        intervals: 10,
        per_interval: 5,
        top_contexts: 20,
        window_before: 12,
        window_after: 4,
        seconds: 0.5,
        definitions: serde_json::json!({}),
    };
    (features, contexts, neighbours, summary)
}

#[test]
fn tables_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (f, c, n, s) = rows();
    write_feature_store(dir.path(), &f, &c, &n, &vocab(), &s).unwrap();
    let store = FeatureStore::open(dir.path()).unwrap();
    assert_eq!(store.features, f);
    let named: Vec<ContextRow> = c.iter().map(|w| w.named(&vocab())).collect();
    assert_eq!(store.contexts, named);
    assert_eq!(store.contexts[0].tokens, ["a", "b", "c"]);
    assert_eq!(store.contexts[1].tokens, ["d"]);
    assert_eq!(store.neighbours, n);
    assert_eq!(store.summary, s);
    assert!(!dir.path().join("features.parquet.tmp").exists());
}

#[test]
fn a_store_without_its_summary_is_refused_with_the_command_that_makes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (f, c, n, s) = rows();
    write_feature_store(dir.path(), &f, &c, &n, &vocab(), &s).unwrap();
    std::fs::remove_file(dir.path().join(SUMMARY_FILE)).unwrap();
    let e = FeatureStore::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("saescope analyze"), "{e}");
    // A corrupted table names its file.
    write_feature_store(dir.path(), &f, &c, &n, &vocab(), &s).unwrap();
    std::fs::write(dir.path().join(CONTEXTS_FILE), b"not parquet").unwrap();
    let e = FeatureStore::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("contexts.parquet"), "{e}");
}

#[test]
fn a_token_outside_the_vocabulary_is_refused_and_the_old_store_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (f, c, n, s) = rows();
    write_feature_store(dir.path(), &f, &c, &n, &vocab(), &s).unwrap();
    let mut bad = c.clone();
    bad.push(Window {
        feature: 4,
        kind: ContextKind::Top,
        rank: 0,
        token_index: 7,
        activation: 1.0,
        focus: 1,
        token_ids: &[2, 5],
        acts: &[0.0, 1.0],
    });
    let e = write_feature_store(dir.path(), &f, &bad, &n, &vocab(), &s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("contexts.parquet"), "{e}");
    assert!(e.contains("feature 4 at token 7 holds token id 5"), "{e}");
    assert!(e.contains("vocabulary of 5 tokens"), "{e}");
    let store = FeatureStore::open(dir.path()).unwrap();
    assert_eq!(store.contexts.len(), 2);
    assert_eq!(store.summary, s);
}

#[test]
fn neuronpedia_export_carries_every_feature_and_context() {
    use saescope_store::neuronpedia::{ExportInfo, dashboard_batch};
    let dir = tempfile::tempdir().unwrap();
    let (f, c, n, s) = rows();
    write_feature_store(dir.path(), &f, &c, &n, &vocab(), &s).unwrap();
    let store = FeatureStore::open(dir.path()).unwrap();
    let info = ExportInfo {
        model_id: "smollm2-135m".into(),
        layer: 6,
        sae_set: "res-saescope".into(),
        dataset: "brown".into(),
        tokens_per_prompt: 25,
        neuron_alignment: vec![vec![(3, -0.5, 0.25)]],
        explanations: Default::default(),
        scores: Default::default(),
    };
    let b = dashboard_batch(&store, &info);
    assert_eq!(b["model_id"], "smollm2-135m");
    assert_eq!(b["layer"], 6);
    let feats = b["features"].as_array().unwrap();
    assert_eq!(feats.len(), 5);
    let f0 = &feats[0];
    assert_eq!(f0["feature_index"], 0);
    assert_eq!(f0["neuron_alignment_indices"], serde_json::json!([3]));
    assert_eq!(f0["n_prompts_total"], 4);
    let acts = f0["activations"].as_array().unwrap();
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0]["bin_min"], -1.0);
    assert_eq!(acts[0]["tokens"], serde_json::json!(["a", "b", "c"]));
    assert_eq!(acts[0]["values"], serde_json::json!([0.0, 0.5, 2.5]));
    assert_eq!(acts[0]["qualifying_token_index"], 2);
    // Feature 3's interval-9 sample: the top tenth of [0, max_act = 9].
    let f3 = &feats[3];
    let a3 = &f3["activations"][0];
    assert!((a3["bin_min"].as_f64().unwrap() - 8.1).abs() < 1e-5);
    assert!((a3["bin_max"].as_f64().unwrap() - 9.0).abs() < 1e-5);
    let heights: u64 = f3["freq_hist_data_bar_heights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .sum();
    assert_eq!(heights, (0..50u64).map(|i| i * 3).sum::<u64>());
    assert_eq!(f3["pos_str"], serde_json::json!([" tok3", "é\n"]));
    assert_eq!(f3["neg_values"], serde_json::json!([-1.0]));
    assert_eq!(f3["decoder_weights_dist"], serde_json::json!([]));
    assert_eq!(
        feats[2]["decoder_weights_dist"],
        serde_json::json!([0.25, 0.75])
    );
    assert!(feats[1]["activations"].as_array().unwrap().is_empty());
    assert!(feats.iter().all(|f| f.get("explanations").is_none()));

    // An explained latent carries its explanation in Neuronpedia's field names; a failed one
    // (no explanation parsed) carries none.
    let row = |latent, explanation: Option<&str>| saescope_store::explanations::ExplanationRow {
        latent,
        evidence: saescope_store::explanations::Evidence::Activations,
        explanation: explanation.map(str::to_owned),
        explainer: "server http://127.0.0.1:8080/v1 org/explainer-7b".into(),
        settings: "{}".into(),
        prompt_hash: "h".into(),
        examples: 40,
        failures: 0,
        raw: String::new(),
    };
    let explained = ExportInfo {
        explanations: [
            (
                3,
                vec![
                    row(3, Some("plural nouns")),
                    saescope_store::explanations::ExplanationRow {
                        evidence: saescope_store::explanations::Evidence::Effects,
                        ..row(3, Some("says more nouns"))
                    },
                ],
            ),
            (2, vec![row(2, None)]),
        ]
        .into(),
        // Feature 3's own explanation's scores go with it; a control's and the output-side
        // explanation's (unscored here) do not.
        scores: [(
            3,
            vec![
                score_row(3, "detection", Control::Real, Some(0.8), None),
                score_row(3, "simulation", Control::Real, None, Some(0.4)),
                score_row(3, "detection", Control::Shuffled, Some(0.5), None),
            ],
        )]
        .into(),
        ..info
    };
    let mut e = dashboard_batch(&store, &explained);
    let scores = e["features"][3]["explanations"][0]
        .as_object_mut()
        .unwrap()
        .remove("scores")
        .unwrap();
    let details: serde_json::Value =
        serde_json::from_str(scores[1]["jsonDetails"].as_str().unwrap()).unwrap();
    assert_eq!(details["value"], serde_json::json!(0.4));
    assert_eq!(details["bin_recall"], serde_json::json!([1.0, null]));
    assert_eq!(
        scores
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (
                s["value"].as_f64().unwrap(),
                s["explanationScoreTypeName"].as_str().unwrap(),
                s["explanationScoreModelName"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        vec![
            (0.8, "saescope_detection", "scorer-1b"),
            (0.4, "saescope_simulation", "scorer-1b")
        ]
    );
    assert_eq!(
        e["features"][3]["explanations"],
        serde_json::json!([{
            "description": "plural nouns",
            "explanationModelName": "explainer-7b",
            "typeName": "saescope_acts",
        }, {
            "description": "says more nouns",
            "explanationModelName": "explainer-7b",
            "typeName": "saescope_effects",
        }])
    );
    assert!(e["features"][2].get("explanations").is_none());

    // The committed copy is what `scripts/interop-fixtures --dashboard` loads into SAEDashboard's
    // own dataclasses; SAESCOPE_BLESS=1 rewrites it after a deliberate change.
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/neuronpedia-batch.json");
    if std::env::var_os("SAESCOPE_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, serde_json::to_string_pretty(&b).unwrap() + "\n").unwrap();
    }
    // Compared as text: reading floats back need not give the same bits.
    let want = std::fs::read_to_string(&golden).unwrap();
    assert!(
        serde_json::to_string_pretty(&b).unwrap() + "\n" == want,
        "the export differs from {}",
        golden.display()
    );
}

#[test]
fn one_features_contexts_are_read_from_its_row_groups_alone() {
    // 3,000 features with 5 contexts each span several row groups of CONTEXT_ROWS_PER_GROUP.
    let dir = tempfile::tempdir().unwrap();
    let (_, _, _, mut s) = rows();
    let n = 3_000u32;
    let features: Vec<FeatureRow> = (0..n)
        .map(|f| FeatureRow {
            feature: f,
            ..FeatureRow::default()
        })
        .collect();
    // Built a feature at a time and appended, as `analyze` does.
    let mut contexts = Contexts::default();
    for f in 0..n {
        let mut part = Contexts::with_capacity(5, 10);
        for r in 0..5u16 {
            part.push(Window {
                feature: f,
                kind: if r < 3 {
                    ContextKind::Top
                } else {
                    ContextKind::Interval(r as u8)
                },
                rank: r,
                token_index: f as u64 * 10 + r as u64,
                activation: f as f32 + r as f32 / 10.0,
                focus: 1,
                token_ids: &[f, n + r as u32],
                acts: &[0.0, f as f32],
            });
        }
        contexts.append(&part);
    }
    let vocab: Vec<String> = (0..n)
        .map(|f| format!("f{f}"))
        .chain((0..5).map(|r| format!("r{r}")))
        .collect();
    assert!(contexts.len() > 3 * CONTEXT_ROWS_PER_GROUP);
    s.features = n as u64;
    write_feature_store(dir.path(), &features, &contexts, &[], &vocab, &s).unwrap();
    let file = ContextsFile::open(dir.path()).unwrap();
    for f in [0, 1, 818, 819, 820, 1_638, 2_999] {
        let want: Vec<ContextRow> = (0..5u16)
            .map(|r| ContextRow {
                feature: f,
                kind: if r < 3 {
                    ContextKind::Top
                } else {
                    ContextKind::Interval(r as u8)
                },
                rank: r,
                token_index: f as u64 * 10 + r as u64,
                activation: f as f32 + r as f32 / 10.0,
                focus: 1,
                token_ids: vec![f, n + r as u32],
                tokens: vec![format!("f{f}"), format!("r{r}")],
                acts: vec![0.0, f as f32],
            })
            .collect();
        assert_eq!(file.of(f).unwrap(), want, "feature {f}");
        assert_eq!(
            read_contexts(&dir.path().join(CONTEXTS_FILE), Some(f)).unwrap(),
            want
        );
    }
    assert!(file.of(n).unwrap().is_empty());
    assert_eq!(read_features(dir.path()).unwrap(), features);
    assert_eq!(read_summary(dir.path()).unwrap(), s);
}
