//! saescope's own BERT sentence encoder against sentence-transformers: the bundled
//! all-MiniLM-L6-v2's token ids and unit vectors for a few texts, computed by
//! `reference/make_minilm_fixture.py` with sentence-transformers itself.

use saescope_activations::bert::SentenceEncoder;
use tch::Device;

mod common;

#[derive(serde::Deserialize)]
struct Reference {
    max_seq_length: usize,
    texts: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/minilm/reference.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn encoder() -> SentenceEncoder {
    let dir = common::cache().join("assets/all-minilm-l6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{}: the embedding model is missing (run ./scripts/test or `saescope setup` first)",
        dir.display()
    );
    SentenceEncoder::open(&dir, Device::Cpu).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

#[test]
fn minilm_matches_sentence_transformers() {
    let r = reference();
    let enc = encoder();
    assert_eq!(enc.max_len, r.max_seq_length);
    for (text, ids) in r.texts.iter().zip(&r.token_ids) {
        assert_eq!(&enc.token_ids(text).unwrap(), ids, "{text:?}");
    }
    let texts: Vec<&str> = r.texts.iter().map(String::as_str).collect();
    // Three at a time, as the reference was computed, so padding is exercised.
    let got = enc.encode(&texts, 3).unwrap();
    for ((text, want), v) in r.texts.iter().zip(&r.embeddings).zip(&got) {
        assert_eq!(v.len(), 384);
        assert!((dot(v, v) - 1.0).abs() < 1e-5, "{text:?}: not unit length");
        let cos = dot(v, want) / dot(want, want).sqrt();
        assert!(
            cos > 1.0 - 1e-4,
            "{text:?}: cosine {cos} with the reference"
        );
    }
    // Alone or batched with longer texts: the same vector (padding is never attended).
    let alone = enc.encode(&texts[3..4], 1).unwrap();
    assert!(dot(&alone[0], &got[3]) > 1.0 - 1e-6);
}

#[test]
fn long_texts_are_cut_to_the_models_length() {
    let enc = encoder();
    let long = "word ".repeat(600);
    let ids = enc.token_ids(&long).unwrap();
    assert_eq!(ids.len(), enc.max_len);
    assert_eq!(ids[0], 101, "[CLS] first");
    assert_eq!(*ids.last().unwrap(), 102, "[SEP] last");
    let v = enc.encode(&[long.as_str()], 1).unwrap();
    assert!((dot(&v[0], &v[0]) - 1.0).abs() < 1e-5);
}
