//! Hugging Face checkpoints: tiny randomly initialised Llama (sharded safetensors, grouped-query
//! attention, rotate-half RoPE, untied unembedding) and GPT-2 models, against the outputs that
//! transformers computed for them (reference/make_hf_fixtures.py).

use saescope_activations::hooks::{HookPoint, Hooks};
use saescope_activations::model::Model;

mod common;
use tch::{Device, Kind, Tensor};

use common::{flat, hf_fixture as fixture};

fn check(name: &str, arch: &str) {
    let dir = fixture(name);
    let loaded = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let m = loaded.model;
    assert_eq!(m.architecture(), arch);
    assert_eq!(m.n_layers(), 2);
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let ids: Vec<Vec<i64>> = serde_json::from_value(reference["ids"].clone()).unwrap();
    let input = Tensor::from_slice(&ids.concat()).view([ids.len() as i64, -1]);

    let points: Vec<HookPoint> = reference["hooks"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    assert_eq!(points.len(), 10, "five hooks in each of two layers");
    let mut hooks = points.iter().fold(Hooks::new(), |h, &p| h.capture(p));
    let logits = m.forward(&input, &mut hooks, true).unwrap().unwrap();
    let got = Vec::<f32>::try_from(logits.contiguous().view([-1])).unwrap();
    let want = flat(&reference["logits"]);
    let err = common::max_abs_diff(&got, &want);
    assert!(err < 1e-5, "{name}: max abs logit error {err}");
    for p in points {
        let t = hooks.take(p).unwrap();
        let got = Vec::<f32>::try_from(t.contiguous().view([-1])).unwrap();
        let want = flat(&reference["hooks"][p.to_string()]);
        assert_eq!(got.len(), want.len(), "{name} {p}");
        let err = common::max_abs_diff(&got, &want);
        assert!(err < 1e-5, "{name} {p}: max abs error {err}");
    }
}

#[test]
fn llama_checkpoint_matches_transformers() {
    check("llama", "llama");
}

#[test]
fn gpt2_checkpoint_matches_transformers() {
    check("gpt2", "gpt2");
}

#[test]
fn unsupported_and_pickled_checkpoints_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    std::fs::write(tmp.path().join("pytorch_model.bin"), b"pickle").unwrap();
    let e = Model::load(tmp.path(), Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("pickled checkpoints are not loaded") && e.contains("safe_serialization=True"),
        "{e}"
    );

    let dir = fixture("gpt2");
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(
        dir.join("model.safetensors"),
        other.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(other.join("config.json"), r#"{"model_type": "t5"}"#).unwrap();
    let e = Model::load(&other, Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(
            "architecture `t5` is not supported (saescope runs Hugging Face checkpoints of \
             llama, mistral, qwen2, qwen3, gemma2, gemma3_text, gpt2 and gpt_neox, and GGUF \
             files of llama, qwen2, qwen3, gemma2, gemma3 and gptneox)"
        ),
        "{e}"
    );

    // A config that disagrees with the weights: the shape error names the tensor.
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    cfg["n_embd"] = 32.into();
    std::fs::write(other.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let e = Model::load(&other, Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tensor `transformer.h.0.ln_1.weight` has shape [64], expected [32]"),
        "{e}"
    );
}
