#![allow(dead_code)]
//! The bundled model, for the tests that run it.

use saescope_activations::model::Model;
use saescope_activations::tokenizer::TextTokenizer;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// The bundled model's file (installed by ./scripts/test or `saescope setup`).
pub fn model_path() -> PathBuf {
    let cache = std::env::var_os("SAESCOPE_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/saescope")
        });
    let path = cache.join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} (run ./scripts/test or `saescope setup`)",
        path.display()
    );
    path
}

/// The bundled model and its tokenizer.
pub fn model() -> (Model, TextTokenizer) {
    let loaded = Model::load(&model_path(), Device::Cpu, Kind::Float).unwrap();
    (loaded.model, loaded.tokenizer.unwrap())
}

pub const TEXT: &str = "The city council met on Tuesday evening to discuss the new budget. Several \
    residents spoke about the condition of the roads, and the mayor promised that repairs \
    would begin in the spring. The library will also stay open later on weekends, which \
    many families had asked for during the last meeting of the year.";

/// The bundled model and two contexts of 24 tokens of real text, BOS first.
pub fn model_and_ids() -> (Model, Tensor) {
    let (model, tok) = model();
    let body: Vec<i64> = tok
        .encode(TEXT)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    let bos = tok.bos.unwrap() as i64;
    let n = 24usize;
    assert!(body.len() >= 2 * n);
    let mut ids = Vec::new();
    for c in 0..2 {
        ids.push(bos);
        ids.extend_from_slice(&body[c * n..c * n + n - 1]);
    }
    (model, Tensor::from_slice(&ids).view([2, n as i64]))
}

/// A random TopK dictionary of 256 unit-norm latents over `hook` of the bundled model (width
/// 576), saved under `dir` and opened with the model.
pub fn random_topk_session(hook: &str, dir: &std::path::Path) -> saescope_analysis::Session {
    topk_session(hook, dir, &[])
}

/// [`random_topk_session`] with the decoder rows of `planted` latents replaced by the given
/// directions (normalised).
pub fn topk_session(
    hook: &str,
    dir: &std::path::Path,
    planted: &[(i64, Tensor)],
) -> saescope_analysis::Session {
    use saescope_sae::AnyDictionary;
    use saescope_sae::seeded::Seeded;
    use saescope_sae::topk::{Selection, TopKSae};
    use saescope_store::dictionary::{DictConfig, DictDir};
    let mut rng = Seeded::new(5);
    let (n, d) = (256, 576);
    let w = rng.normal(&[n, d], Device::Cpu);
    let w_dec = &w / w.norm_scalaropt_dim(2.0, [1], true);
    for (f, row) in planted {
        let row = row.to_kind(Kind::Float);
        w_dec.get(*f).copy_(&(&row / row.norm()));
    }
    let sae = TopKSae {
        w_enc: &w / 4.0,
        b_enc: rng.normal(&[n], Device::Cpu) * 0.1 - 0.5,
        w_dec,
        b_dec: Tensor::zeros([d], (Kind::Float, Device::Cpu)),
        k: 8,
        selection: Selection::TopK,
        threshold: None,
        bf16_select: false,
    };
    let out = DictDir::new(dir.join("d"));
    let cfg = DictConfig {
        hook_name: Some(hook.into()),
        ..DictConfig::default()
    };
    AnyDictionary::TopK(sae).save(&out, &[], cfg).unwrap();
    saescope_analysis::Session::open(&saescope_analysis::SessionSpec::new(out.path())).unwrap()
}
