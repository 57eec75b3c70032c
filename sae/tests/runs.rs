//! Checkpoints, resume, and the on-disk dictionary formats.

use saescope_sae::Method;
use saescope_sae::data::MemorySource;
use saescope_sae::dictionary::{AnyDictionary, serialize};
use saescope_sae::synthetic::flat;
use saescope_sae::train::{LogLine, Observer, TrainConfig, train};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn data() -> MemorySource {
    let p = flat(128, 16, 6000, 3, 0.01, 5);
    MemorySource {
        data: Vec::<f32>::try_from(p.data.reshape([-1])).unwrap(),
        dim: 16,
        seed: 2,
    }
}

fn cfg(method: Method) -> TrainConfig {
    TrainConfig {
        method,
        latents: 128,
        k: 3,
        batch_tokens: 256,
        tokens: 256 * 40,
        warmup_steps: 5,
        init_tokens: 1024,
        dead_tokens: 2000,
        checkpoint_every: 10,
        log_every: 5,
        threshold_start_step: 3,
        ..TrainConfig::default()
    }
}

/// Stands in for a kill: panics once training reaches `at` steps.
struct KillAt(u64);
impl Observer for KillAt {
    fn step(&mut self, line: &LogLine) {
        if line.step == self.0 {
            panic!("killed at step {}", self.0);
        }
    }
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut t: Vec<_> =
        saescope_sae::dictionary::read_safetensors(&dir.join("sae_weights.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let src = data();
    for method in [Method::TopK, Method::BatchTopK, Method::MpSae, Method::Gba] {
        let c = cfg(method);
        let whole = tempfile::tempdir().unwrap();
        train(
            &src,
            None,
            &c,
            whole.path(),
            false,
            Device::Cpu,
            Default::default(),
            &mut (),
        )
        .unwrap();
        let cut = tempfile::tempdir().unwrap();
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            train(
                &src,
                None,
                &c,
                cut.path(),
                false,
                Device::Cpu,
                Default::default(),
                &mut KillAt(25),
            )
            .ok()
        }));
        assert!(killed.is_err());
        assert!(
            cut.path().join("checkpoint.safetensors").exists(),
            "{method:?}: checkpoint at step 20"
        );
        assert!(!cut.path().join("sae_weights.safetensors").exists());
        train(
            &src,
            None,
            &c,
            cut.path(),
            true,
            Device::Cpu,
            Default::default(),
            &mut (),
        )
        .unwrap();
        let (a, b) = (weights(whole.path()), weights(cut.path()));
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            let diff = (ta.to_kind(Kind::Double) - tb.to_kind(Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            assert_eq!(diff, 0.0, "{method:?}: {na} differs by {diff} after resume");
        }
        // The resumed log has each logged step once.
        let log = std::fs::read_to_string(cut.path().join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = log
            .lines()
            .map(|l| serde_json::from_str::<LogLine>(l).unwrap().step)
            .collect();
        assert_eq!(
            steps,
            (1..=8).map(|i| i * 5).collect::<Vec<_>>(),
            "{method:?}"
        );
    }
}

#[test]
fn resume_with_other_settings_is_refused() {
    let src = data();
    let c = cfg(Method::TopK);
    let dir = tempfile::tempdir().unwrap();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(
            &src,
            None,
            &c,
            dir.path(),
            false,
            Device::Cpu,
            Default::default(),
            &mut KillAt(15),
        )
        .ok()
    }));
    let other = TrainConfig { k: 4, ..c };
    let err = train(
        &src,
        None,
        &other,
        dir.path(),
        true,
        Device::Cpu,
        Default::default(),
        &mut (),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("other settings"), "{err}");
}

#[test]
fn saved_dictionaries_load_back_and_encode_the_same() {
    let src = data();
    let x = Tensor::from_slice(&src.data[..16 * 64]).view([64, 16]);
    for method in [
        Method::TopK,
        Method::BatchTopK,
        Method::MpSae,
        Method::Gba,
        Method::Snmf,
    ] {
        let mut c = cfg(method);
        c.checkpoint_every = 0;
        c.tokens = if method == Method::Snmf {
            2000
        } else {
            c.tokens
        };
        c.latents = if method == Method::Snmf { 8 } else { c.latents };
        c.snmf.max_iter = 20;
        let dir = tempfile::tempdir().unwrap();
        let report = train(
            &src,
            None,
            &c,
            dir.path(),
            false,
            Device::Cpu,
            Default::default(),
            &mut (),
        )
        .unwrap();
        let loaded = AnyDictionary::load(dir.path(), Some(16), Device::Cpu).unwrap();
        let (a, b) = (report.dictionary.as_dyn(), loaded.as_dyn());
        let ra = a.decode(&a.encode(&x));
        let rb = b.decode(&b.encode(&x));
        let diff = (ra - rb).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{method:?}: reconstructions differ by {diff}");
        let cfg_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("cfg.json")).unwrap())
                .unwrap();
        assert_eq!(cfg_json["d_in"], 16);
        assert_eq!(
            cfg_json["saescope"]["config"]["method"],
            serde_json::to_value(method).unwrap()
        );
        let err = AnyDictionary::load(dir.path(), Some(17), Device::Cpu)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("cfg.json") && err.to_string().contains("17"),
            "{err}"
        );
    }
}

#[test]
fn sparsify_and_saelens_files_load_by_shape() {
    tch::manual_seed(4);
    let (n, d) = (40i64, 8i64);
    let enc = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let dec = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let b_enc = Tensor::randn([n], (Kind::Float, Device::Cpu));
    let b_dec = Tensor::randn([d], (Kind::Float, Device::Cpu));
    let x = Tensor::randn([5, d], (Kind::Float, Device::Cpu));
    // The reference: sparsify's TopK forward written out densely.
    let pre = ((&x - &b_dec).matmul(&enc.tr()) + &b_enc).relu();
    let (v, i) = pre.topk(4, 1, true, false);
    let want = Tensor::zeros([5, n], (Kind::Float, Device::Cpu))
        .scatter(1, &i, &v)
        .matmul(&dec)
        + &b_dec;
    let write = |dir: &Path, file: &str, cfg: serde_json::Value, tensors: Vec<(String, Tensor)>| {
        std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
        std::fs::write(dir.join(file), serialize(&tensors, None).unwrap()).unwrap();
    };
    // sparsify: encoder.weight [n, d]; W_dec stored either way round.
    for dec_stored in [dec.shallow_clone(), dec.tr().contiguous()] {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "sae.safetensors",
            serde_json::json!({"d_in": d, "num_latents": n, "k": 4, "expansion_factor": 5}),
            vec![
                ("encoder.weight".into(), enc.shallow_clone()),
                ("encoder.bias".into(), b_enc.shallow_clone()),
                ("W_dec".into(), dec_stored),
                ("b_dec".into(), b_dec.shallow_clone()),
            ],
        );
        let dict = AnyDictionary::load(dir.path(), Some(d as usize), Device::Cpu).unwrap();
        let got = dict.as_dyn().decode(&dict.as_dyn().encode(&x));
        assert!((got - &want).abs().max().double_value(&[]) < 1e-5);
    }
    // SAELens TopK: W_enc [d_in, d_sae].
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "sae_weights.safetensors",
        serde_json::json!({"d_in": d, "d_sae": n, "k": 4, "architecture": "topk"}),
        vec![
            ("W_enc".into(), enc.tr().contiguous()),
            ("b_enc".into(), b_enc.shallow_clone()),
            ("W_dec".into(), dec.shallow_clone()),
            ("b_dec".into(), b_dec.shallow_clone()),
        ],
    );
    let dict = AnyDictionary::load(dir.path(), None, Device::Cpu).unwrap();
    let got = dict.as_dyn().decode(&dict.as_dyn().encode(&x));
    assert!((got - &want).abs().max().double_value(&[]) < 1e-5);
    // A shape that fits neither orientation is named with the file and the expected shapes.
    write(
        dir.path(),
        "sae_weights.safetensors",
        serde_json::json!({"d_in": d, "d_sae": n, "k": 4, "architecture": "topk"}),
        vec![
            (
                "W_enc".into(),
                Tensor::zeros([d, n + 1], (Kind::Float, Device::Cpu)),
            ),
            ("b_enc".into(), b_enc.shallow_clone()),
            ("W_dec".into(), dec.shallow_clone()),
            ("b_dec".into(), b_dec.shallow_clone()),
        ],
    );
    let err = AnyDictionary::load(dir.path(), None, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("sae_weights.safetensors") && err.contains("W_enc") && err.contains("[40, 8]"),
        "{err}"
    );
}
