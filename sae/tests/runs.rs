//! Checkpoints, resume, and the on-disk dictionary formats.

use saescope_sae::Method;
use saescope_sae::data::MemorySource;
use saescope_sae::dictionary::AnyDictionary;
use saescope_sae::format::safetensors::{read_safetensors, serialize};
use saescope_sae::synthetic::flat;
use saescope_sae::train::{Observer, TrainConfig, train};
use saescope_store::dictionary::LogLine;
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
    fn step(&mut self, step: u64, _line: Option<&LogLine>) {
        if step == self.0 {
            panic!("killed at step {}", self.0);
        }
    }
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut t: Vec<_> = read_safetensors(&dir.join("sae_weights.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let src = data();
    // bf16 selection forced both ways, so resume is proven for each path whatever this CPU
    // would choose (GBA has no selection; it runs once).
    let runs = [Method::TopK, Method::BatchTopK, Method::MpSae]
        .into_iter()
        .flat_map(|m| [(m, false), (m, true)])
        .chain([(Method::Gba, false)]);
    for (method, bf16) in runs {
        let c = TrainConfig {
            bf16_select: Some(bf16),
            ..cfg(method)
        };
        let method = (method, bf16);
        let whole = tempfile::tempdir().unwrap();
        train(
            &src,
            None,
            &c,
            whole.path(),
            false,
            Device::Cpu,
            &Default::default(),
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
                &Default::default(),
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
            &Default::default(),
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
            &Default::default(),
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
        &Default::default(),
        &mut (),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("other settings"), "{err}");
}

/// SNMF keeps no checkpoint: `--resume` is refused, not quietly turned into a fresh start.
#[test]
fn snmf_refuses_to_resume() {
    let src = data();
    let c = TrainConfig {
        latents: 8,
        ..cfg(Method::Snmf)
    };
    let dir = tempfile::tempdir().unwrap();
    let err = train(
        &src,
        None,
        &c,
        dir.path(),
        true,
        Device::Cpu,
        &Default::default(),
        &mut (),
    )
    .err()
    .expect("snmf with resume should be refused");
    assert!(err.to_string().contains("--resume"), "{err}");
    assert!(!dir.path().join("sae_weights.safetensors").exists());
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
            &Default::default(),
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

/// A run of one shard: training and held-out rows come from different contexts, and between
/// them cover every non-BOS token once (rows identified by their values, which are a pure
/// function of the token).
#[test]
fn held_out_rows_are_never_training_rows() {
    use saescope_sae::data::{RunSource, Source};
    use saescope_store::{Dtype, Run, RunWriter, WriterOptions, synthetic};
    use std::collections::HashMap;
    let hook = "blocks.0.hook_resid_post";
    let mut token_of: HashMap<Vec<u32>, u64> = HashMap::new();
    for t in 0..640u64 {
        let mut row = Vec::new();
        synthetic::fill(t, 1, 0, 6, &mut row);
        token_of.insert(row.iter().map(|v| v.to_bits()).collect(), t);
    }
    // One shard is split by whole contexts inside it; 24 bytes a token, 160 tokens a shard
    // make four shards, of which the last is held out whole.
    for (shard_bytes, shards, first_held) in [(None, 1, 576), (Some(24 * 160), 4, 480)] {
        let tmp = tempfile::tempdir().unwrap();
        let mut opts = WriterOptions::default();
        if let Some(b) = shard_bytes {
            opts.shard_bytes = b;
            opts.row_group_bytes = b / 2;
        }
        let mut w = RunWriter::create(
            tmp.path(),
            synthetic::spec(vec![synthetic::hook(hook, &[6], Dtype::F32)], 32),
            &opts,
        )
        .unwrap();
        synthetic::append_until(&mut w, 640, 100, |_| {}).unwrap();
        w.finish().unwrap();
        let run = Run::open(tmp.path()).unwrap();
        assert_eq!(run.manifest().shards.len(), shards);
        let split = run.manifest().heldout_split(0.1);
        let read = |set| -> Vec<u64> {
            let mut src = RunSource::new(run.clone(), hook, set).unwrap();
            src.shuffle_buffer = 64;
            let mut out = Vec::new();
            for chunk in src.epoch(0).unwrap() {
                for row in chunk.unwrap().chunks(6) {
                    let bits: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
                    out.push(token_of[&bits]);
                }
            }
            out.sort_unstable();
            out
        };
        let train = read(split.train.clone());
        let held = read(split.heldout.clone());
        assert!(
            train.iter().all(|&t| t < first_held),
            "{shards} shard(s): a held-out token was trained on"
        );
        assert!(
            held.iter().all(|&t| t >= first_held) && !held.is_empty(),
            "{shards} shard(s): a training token was held out"
        );
        let mut all = train.clone();
        all.extend(&held);
        all.sort_unstable();
        let want: Vec<u64> = (0..640).filter(|t| t % 32 != 0).collect();
        assert_eq!(all, want, "{shards} shard(s): every non-BOS token once");
    }
}

/// An MP-SAE's cfg.json states its stopping rule in SAELens' fields, so SAELens runs the same
/// pursuit, and saescope reads the rule back from them.
#[test]
fn a_saved_mpsae_states_its_stopping_rule() {
    use saescope_sae::mpsae::Stop;
    let read_cfg = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("cfg.json")).unwrap()).unwrap()
    };
    let stop_of = |dir: &Path| match AnyDictionary::load(dir, None, Device::Cpu).unwrap() {
        AnyDictionary::Mp(m) => m.stop,
        _ => panic!("not an MP-SAE"),
    };
    // The default: exactly k steps, no early stop.
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(Method::MpSae);
    c.tokens = 2048;
    train(
        &data(),
        None,
        &c,
        dir.path(),
        false,
        Device::Cpu,
        &Default::default(),
        &mut (),
    )
    .unwrap();
    let j = read_cfg(dir.path());
    assert_eq!(j["architecture"], "matching_pursuit");
    assert_eq!(j["max_iterations"], c.k);
    assert_eq!(j["residual_threshold"], 0.0);
    assert_eq!(j["stop_on_duplicate_support"], false);
    assert_eq!(stop_of(dir.path()), Stop::steps(c.k));
    // A residual threshold set for inference is written and read back.
    let dir2 = tempfile::tempdir().unwrap();
    c.mp_residual_threshold = Some(0.25);
    c.mp_max_steps = Some(12);
    train(
        &data(),
        None,
        &c,
        dir2.path(),
        false,
        Device::Cpu,
        &Default::default(),
        &mut (),
    )
    .unwrap();
    let j = read_cfg(dir2.path());
    assert_eq!(
        (j["max_iterations"].clone(), j["residual_threshold"].clone()),
        (12.into(), 0.25.into())
    );
    let want = Stop {
        max_steps: 12,
        residual_threshold: 0.25,
        duplicate_support: false,
    };
    assert_eq!(stop_of(dir2.path()), want);
    // A SAELens file that leaves the fields out gets SAELens' defaults.
    let mut j = read_cfg(dir.path());
    let o = j.as_object_mut().unwrap();
    for k in [
        "max_iterations",
        "residual_threshold",
        "stop_on_duplicate_support",
        "saescope",
    ] {
        o.remove(k);
    }
    std::fs::write(dir.path().join("cfg.json"), j.to_string()).unwrap();
    let d_in = data().dim;
    let want = Stop {
        max_steps: d_in,
        residual_threshold: 0.01,
        duplicate_support: true,
    };
    assert_eq!(stop_of(dir.path()), want);
    // A file saescope wrote before it used SAELens' fields kept its rule in `saescope.mp_stop`.
    j["saescope"] = serde_json::json!({"config": {"k": 3},
        "mp_stop": {"residual_threshold": 0.5, "max_steps": 7}});
    std::fs::write(dir.path().join("cfg.json"), j.to_string()).unwrap();
    let want = Stop {
        max_steps: 7,
        residual_threshold: 0.5,
        duplicate_support: false,
    };
    assert_eq!(stop_of(dir.path()), want);
    j["saescope"] = serde_json::json!({"config": {"k": 3}, "mp_stop": {"steps": 5}});
    std::fs::write(dir.path().join("cfg.json"), j.to_string()).unwrap();
    assert_eq!(stop_of(dir.path()), Stop::steps(5));
}
