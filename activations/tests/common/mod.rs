#![allow(dead_code)]
//! Where the bundled assets are, for the tests that use them. The README's test command installs
//! them first (`saescope setup`).

use std::path::PathBuf;

pub fn cache() -> PathBuf {
    std::env::var_os("SAESCOPE_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/saescope")
        })
}

/// Reads a bundled asset file, with a hint when it is not installed.
pub fn read_asset(rel: &str) -> Vec<u8> {
    let path = cache().join("assets").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run ./scripts/test or `saescope setup` first)",
            path.display()
        )
    })
}

/// The bundled SmolLM2-135M GGUF file's bytes.
pub fn smollm2_gguf() -> Vec<u8> {
    read_asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "slices of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A minimal GGUF writer for tests: metadata as (key, type id, encoded value) and tensors.
pub struct Writer {
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    alignment: usize,
}

pub fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

impl Writer {
    pub fn new() -> Self {
        Writer {
            kv: vec![],
            tensors: vec![],
            alignment: 32,
        }
    }
    pub fn kv(mut self, key: &str, ty: u32, value: Vec<u8>) -> Self {
        self.kv.push((key.into(), ty, value));
        self
    }
    /// `dims` innermost first, as GGUF stores them.
    pub fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            out.extend(string(k));
            out.extend(ty.to_le_bytes());
            out.extend(v);
        }
        let mut offset = 0usize;
        let mut offsets = vec![];
        for (name, dims, ty, data) in &self.tensors {
            out.extend(string(name));
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).div_ceil(self.alignment) * self.alignment;
        }
        let start = out.len().div_ceil(self.alignment) * self.alignment;
        out.resize(start, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(start + off, 0);
            out.extend(data);
        }
        out
    }
}

pub fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A tiny Hugging Face checkpoint under tests/fixtures/hf, made by the reference scripts.
pub fn hf_fixture(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// Every number of a nested JSON array, in order.
pub fn flat(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
        x => vec![x.as_f64().unwrap() as f32],
    }
}

/// A metadata-only vocabulary GGUF under tests/fixtures (`{name}-vocab.gguf.gz`), unpacked.
pub fn vocabulary_gguf(name: &str) -> Vec<u8> {
    use std::io::Read;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}-vocab.gguf.gz"));
    let gz = std::fs::read(&path).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// The ids transformers gave for each text (`{name}-tokens.json`) against `tok`'s, each text
/// also decoding back to itself; returns (texts, tokens) compared.
pub fn check_reference_ids(
    name: &str,
    tok: &saescope_activations::tokenizer::TextTokenizer,
) -> (usize, usize) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}-tokens.json"));
    let want: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(tok.bos, Some(want["bos"].as_u64().unwrap() as u32));
    assert_eq!(tok.eos, Some(want["eos"].as_u64().unwrap() as u32));
    assert_eq!(
        tok.vocab_size() as u64,
        want["vocab_size"].as_u64().unwrap()
    );
    let (mut texts, mut tokens) = (0, 0);
    for case in want["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, ids, "{text:?}");
        assert_eq!(tok.decode(&got).unwrap(), text, "decoding {text:?}");
        texts += 1;
        tokens += ids.len();
    }
    (texts, tokens)
}

/// The largest logit error of `logits` [positions, vocab] against one prompt of a real-file
/// fixture (`top5_ids`/`top5_logits` at every position, `last_strided_logits` every `stride`-th
/// id of the last), asserting on the way that the same five tokens lead at every position
/// (their order may differ only between near-equal logits).
pub fn fixture_logit_error(
    logits: &tch::Tensor,
    p: &serde_json::Value,
    stride: i64,
    prompt: usize,
) -> f32 {
    let mut err = 0f32;
    let top_ids: Vec<Vec<i64>> = serde_json::from_value(p["top5_ids"].clone()).unwrap();
    let top_logits: Vec<Vec<f32>> = serde_json::from_value(p["top5_logits"].clone()).unwrap();
    for (pos, (ids5, values)) in top_ids.iter().zip(&top_logits).enumerate() {
        let row = logits.get(pos as i64);
        for (&id, &v) in ids5.iter().zip(values) {
            err = err.max((row.double_value(&[id]) as f32 - v).abs());
        }
        let mut got: Vec<i64> = Vec::try_from(row.topk(5, -1, true, true).1).unwrap();
        let mut want5 = ids5.clone();
        got.sort_unstable();
        want5.sort_unstable();
        assert_eq!(
            got, want5,
            "prompt {prompt} position {pos}: top 5 tokens differ"
        );
    }
    let last = logits.get(-1).slice(0, 0, None, stride);
    let last: Vec<f32> = Vec::try_from(last.contiguous()).unwrap();
    let strided: Vec<f32> = serde_json::from_value(p["last_strided_logits"].clone()).unwrap();
    assert_eq!(last.len(), strided.len());
    for (g, w) in last.iter().zip(&strided) {
        err = err.max((g - w).abs());
    }
    err
}

/// The real model file an opt-in test reads, from environment variable `var`; `None` (after
/// saying so, naming the file to point it at) when it is unset, so CI need not fetch it.
pub fn opt_in_file(var: &str, test: &str, file: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).filter(|p| !p.is_empty());
    if path.is_none() {
        eprintln!("SKIPPED {test}: set {var} to {file} to run it");
    }
    path.map(PathBuf::from)
}
