#![allow(dead_code)]
//! The bundled model, for the tests that run it.

use saescope_activations::model::Model;
use saescope_activations::tokenizer::TextTokenizer;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// The bundled model and its tokenizer (installed by ./scripts/test or `saescope setup`).
pub fn model() -> (Model, TextTokenizer) {
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
    let loaded = Model::load(&path, Device::Cpu, Kind::Float).unwrap();
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
