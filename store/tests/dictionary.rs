//! The dictionary directory: file names, and cfg.json read from SAELens, sparsify and saescope
//! files, kept whole through a read and write, with errors that name the file and the field.

use saescope_store::DictDir;
use saescope_store::dictionary::DictConfig;
use saescope_store::explanations::Evidence;

fn write_cfg(dir: &DictDir, json: &str) {
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.config(), json).unwrap();
}

#[test]
fn a_run_lists_its_dictionaries_and_each_knows_its_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("manifest.json"), "{}").unwrap();
    for name in ["b-topk", "a-mpsae"] {
        write_cfg(&DictDir::in_run(&run, name), r#"{"d_in": 4, "d_sae": 8}"#);
    }
    // A folder without cfg.json is not a dictionary.
    std::fs::create_dir_all(run.join("dictionaries/partial")).unwrap();
    let dicts = DictDir::list(&run);
    let names: Vec<String> = dicts.iter().map(DictDir::name).collect();
    assert_eq!(names, ["a-mpsae", "b-topk"]);
    assert_eq!(dicts[0].enclosing_run(), Some(run.clone()));
    assert_eq!(
        dicts[0].features(),
        run.join("dictionaries/a-mpsae/features")
    );
    assert_eq!(
        dicts[0].weights(),
        run.join("dictionaries/a-mpsae/sae_weights.safetensors")
    );
    // Elsewhere, a dictionary has no run.
    let loose = DictDir::new(tmp.path().join("loose"));
    write_cfg(&loose, "{}");
    assert_eq!(loose.enclosing_run(), None);
}

#[test]
fn cfg_json_is_read_from_each_producer_and_kept_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let d = DictDir::new(tmp.path().join("d"));
    // SAELens v6, with a float k (SAELens allows one) and keys saescope does not name.
    write_cfg(
        &d,
        r#"{"d_in": 576, "d_sae": 4096, "architecture": "topk", "k": 32.0,
            "metadata": {"hook_name": "blocks.6.hook_resid_post", "model_name": "m", "sae_lens_version": "6.54"},
            "normalize_activations": "none"}"#,
    );
    let c = d.read_config().unwrap();
    assert_eq!(c.hook(), Some("blocks.6.hook_resid_post"));
    assert_eq!(
        (c.k(), c.latents(), c.model()),
        (Some(32), Some(4096), Some("m"))
    );
    let back: serde_json::Value = serde_json::to_value(&c).unwrap();
    assert_eq!(back["metadata"]["sae_lens_version"], "6.54");
    assert_eq!(back["normalize_activations"], "none");
    let again: DictConfig = serde_json::from_value(back).unwrap();
    assert_eq!(again, c, "a read and write loses nothing");

    // Older SAELens: a top-level hook, and TopK as an activation function.
    write_cfg(
        &d,
        r#"{"d_in": 8, "d_sae": 16, "hook_name": "blocks.1.hook_resid_pre",
            "activation_fn": "topk", "activation_fn_kwargs": {"k": 4}}"#,
    );
    let c = d.read_config().unwrap();
    assert_eq!(
        (c.hook(), c.architecture(), c.k()),
        (Some("blocks.1.hook_resid_pre"), Some("topk"), Some(4))
    );

    // sparsify: latents from the expansion factor when num_latents is 0.
    write_cfg(
        &d,
        r#"{"d_in": 8, "num_latents": 0, "expansion_factor": 4, "k": 2}"#,
    );
    assert_eq!(d.read_config().unwrap().latents(), Some(32));
}

#[test]
fn a_bad_cfg_json_names_the_file_and_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let d = DictDir::new(tmp.path().join("d"));
    let e = d.read_config().unwrap_err().to_string();
    assert!(e.contains("not a dictionary directory"), "{e}");
    write_cfg(&d, r#"{"d_in": 8, "d_sae": 2.5}"#);
    let e = d.read_config().unwrap_err().to_string();
    assert!(
        e.contains("cfg.json") && e.contains("d_sae") && e.contains("whole number"),
        "{e}"
    );
    write_cfg(&d, r#"{"metadata": {"hook_name": 3}}"#);
    let e = d.read_config().unwrap_err().to_string();
    assert!(e.contains("metadata.hook_name"), "{e}");
}

/// serde_json writes NaN as null (JSON has no NaN); the reports read it back as NaN instead of
/// refusing the file, so one undefined figure does not hide the others.
#[test]
fn an_undefined_figure_reads_back_as_nan() {
    use saescope_store::dictionary::Metrics;
    let tmp = tempfile::tempdir().unwrap();
    let d = DictDir::new(tmp.path().join("d"));
    write_cfg(&d, "{}");
    let m = Metrics {
        tokens: 10,
        fvu: 0.25,
        explained_variance: 0.75,
        explained_variance_legacy: 0.7,
        mse: 0.1,
        l0: 4.0,
        l1: 2.0,
        cos_sim: 0.9,
        l2_ratio: 0.95,
        relative_reconstruction_bias: f64::NAN,
        dead_fraction: 0.0,
        dense_fraction: 0.0,
        freq_over_1_percent: 0.5,
        log10_density_histogram: vec![1, 2],
        l0_histogram: vec![3],
        formulas: serde_json::Value::Null,
        warnings: vec![],
    };
    let text = serde_json::to_string(&m).unwrap();
    assert!(
        text.contains("\"relative_reconstruction_bias\":null"),
        "{text}"
    );
    std::fs::write(d.metrics(), text).unwrap();
    let back = d.read_metrics().unwrap().expect("metrics.json is there");
    assert_eq!((back.fvu, back.l0), (0.25, 4.0));
    assert!(back.relative_reconstruction_bias.is_nan());
    assert!(
        d.read_eval().unwrap().is_none(),
        "no eval.json: None, not an error"
    );
}

#[test]
fn an_explanation_dataset_carries_the_table_and_a_card_that_counts_it() {
    use saescope_store::explanations::{ExplanationRow, write_explanations};
    let tmp = tempfile::tempdir().unwrap();
    let d = DictDir::new(tmp.path().join("d"));
    write_cfg(
        &d,
        r#"{"d_in": 4, "d_sae": 8, "architecture": "topk", "k": 2,
            "hook_name": "blocks.6.hook_resid_post"}"#,
    );
    let out = tmp.path().join("dataset");
    // Nothing explained yet: an error that names the table and the command, and no folder.
    let e = saescope_store::dataset::write_dataset(&d, &out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("explanations.parquet") && e.contains("saescope explain"),
        "{e}"
    );
    assert!(!out.exists());

    let row = |latent, explanation: Option<&str>, explainer: &str| ExplanationRow {
        latent,
        evidence: Evidence::Activations,
        explanation: explanation.map(str::to_owned),
        explainer: explainer.into(),
        settings: r#"{"temperature": 0.0}"#.into(),
        prompt_hash: "h".into(),
        examples: 40,
        failures: u32::from(explanation.is_none()),
        raw: "EXPLANATION: x".into(),
    };
    let rows = [
        row(1, Some("commas"), "local smollm.gguf"),
        row(5, None, "local smollm.gguf"),
        row(7, Some("plural nouns"), "server http://h/v1 big"),
        ExplanationRow {
            evidence: Evidence::Effects,
            ..row(7, Some("says nouns"), "server http://h/v1 big")
        },
    ];
    write_explanations(&d.explanations_table(), &rows).unwrap();
    let r = saescope_store::dataset::write_dataset(&d, &out).unwrap();
    assert_eq!((r.explained, r.failed), (3, 1));
    assert_eq!(
        r.files,
        ["explanations.parquet", "dataset.json", "README.md"],
        "no examples.parquet to copy"
    );
    assert_eq!(
        std::fs::read(out.join("explanations.parquet")).unwrap(),
        std::fs::read(d.explanations_table()).unwrap()
    );
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(card["dictionary"]["hook"], "blocks.6.hook_resid_post");
    assert_eq!(card["dictionary"]["latents"], 8);
    let e = &card["explanations"];
    assert_eq!((&e["latents"], &e["rows"]), (&3.into(), &4.into()));
    assert_eq!((&e["explained"], &e["failed"]), (&3.into(), &1.into()));
    assert_eq!(
        e["evidence"],
        serde_json::json!({
            "activations": {"tried": 3, "explained": 2, "failed": 1},
            "effects": {"tried": 1, "explained": 1, "failed": 0},
        })
    );
    let explainers = e["explainers"].as_array().unwrap();
    assert_eq!(explainers.len(), 3);
    assert_eq!(explainers[0]["explainer"], "local smollm.gguf");
    assert_eq!(explainers[0]["latents"], 2);
    assert_eq!(explainers[0]["settings"]["temperature"], 0.0);
    assert_eq!(explainers[2]["evidence"], "effects");
    assert!(card["model"].is_null(), "a loose dictionary has no run");
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        readme.contains("`blocks.6.hook_resid_post`")
            && readme.contains("3 latents tried, 3 explanations, 1 attempts without one")
            && readme.contains("(`effects`): 1 tried, 1 explained"),
        "{readme}"
    );
    assert_eq!(card["scores"], serde_json::json!([]));

    // Scored: the tables travel with it and the card gives each scorer and control's means.
    use saescope_store::scores::{Control, ScoreRow, write_scores, write_window_scores};
    let score = |latent, control, ba: Option<f64>| ScoreRow {
        latent,
        scorer: "detection".into(),
        control,
        evidence: Evidence::Activations,
        explanation_of: latent,
        explanation: "x".into(),
        model: "local smollm.gguf".into(),
        settings: "{}".into(),
        windows: 10,
        valid: 9,
        failed: 1,
        balanced_accuracy: ba,
        balanced_accuracy_all: None,
        precision: None,
        recall: None,
        f1: None,
        f1_all: None,
        auc: None,
        bin_recall: vec![],
        bin_auc: vec![],
        value: None,
        bin_value: vec![],
    };
    write_scores(
        &d.scores_table(),
        &[
            score(1, Control::Real, Some(0.9)),
            score(7, Control::Real, Some(0.6)),
            score(7, Control::Shuffled, None),
        ],
    )
    .unwrap();
    write_window_scores(&d.score_windows_table(), &[]).unwrap();
    let r = saescope_store::dataset::write_dataset(&d, &out).unwrap();
    assert_eq!(
        r.files,
        [
            "explanations.parquet",
            "scores.parquet",
            "score_windows.parquet",
            "dataset.json",
            "README.md"
        ]
    );
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("dataset.json")).unwrap()).unwrap();
    let real = &card["scores"][0];
    assert_eq!(
        (&real["control"], &real["latents"]),
        (&"real".into(), &2.into())
    );
    assert!((real["balanced_accuracy"].as_f64().unwrap() - 0.75).abs() < 1e-12);
    assert_eq!((&real["windows"], &real["failed"]), (&20.into(), &2.into()));
    assert!(card["scores"][1]["balanced_accuracy"].is_null());
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        readme.contains("Scores, detection with the real explanations from activations: 2 latents"),
        "{readme}"
    );
}
