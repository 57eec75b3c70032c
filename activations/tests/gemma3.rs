//! Gemma 3's SentencePiece vocabulary, rebuilt from GGUF metadata, gives the ids transformers
//! gives (reference/make_gemma_fixture.py). The vocabulary comes from a metadata-only copy of the
//! gemma-3-270m GGUF's tokenizer tables (1.9 MB gzipped), so this runs without the 250 MB file.

use saescope_activations::gguf::Gguf;
use saescope_activations::tokenizer::TextTokenizer;

mod common;

fn vocabulary_gguf() -> Vec<u8> {
    common::vocabulary_gguf("gemma3")
}

fn check_ids(tok: &TextTokenizer) -> (usize, usize) {
    common::check_reference_ids("gemma3", tok)
}

#[test]
fn gemma3_vocabulary_gives_the_reference_ids() {
    let bytes = vocabulary_gguf();
    let tok = TextTokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    assert_eq!(tok.name, "gguf:llama/gemma3");
    let (texts, tokens) = check_ids(&tok);
    assert_eq!((texts, tokens), (25, 290));
}

/// A vocabulary small enough to work out by hand: merges follow token order, runs of spaces stored
/// as spaces still match, unknown characters fall back to bytes, newlines stay whole.
fn tiny_vocabulary(arch: &str, space_prefix: Option<bool>) -> Vec<u8> {
    const ARRAY: u32 = 9;
    let mut tokens: Vec<(String, i32)> = ["<pad>", "<eos>", "<bos>", "<unk>"]
        .iter()
        .map(|t| (t.to_string(), 3))
        .collect();
    for t in ["a", "b", "\u{2581}", "ab", "\u{2581}ab"] {
        tokens.push((t.into(), 1));
    }
    tokens.push(("  ".into(), 4));
    tokens.push(("\n".into(), 4));
    tokens.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 6)));
    let mut strings = 8u32.to_le_bytes().to_vec();
    strings.extend((tokens.len() as u64).to_le_bytes());
    let mut types = 5u32.to_le_bytes().to_vec();
    types.extend((tokens.len() as u64).to_le_bytes());
    for (t, ty) in &tokens {
        strings.extend(common::string(t));
        types.extend(ty.to_le_bytes());
    }
    let mut w = common::Writer::new()
        .kv("general.architecture", 8, common::string(arch))
        .kv("tokenizer.ggml.model", 8, common::string("llama"))
        .kv("tokenizer.ggml.tokens", ARRAY, strings)
        .kv("tokenizer.ggml.token_type", ARRAY, types)
        .kv(
            "tokenizer.ggml.bos_token_id",
            4,
            2u32.to_le_bytes().to_vec(),
        )
        .kv(
            "tokenizer.ggml.eos_token_id",
            4,
            1u32.to_le_bytes().to_vec(),
        );
    if let Some(p) = space_prefix {
        w = w.kv("tokenizer.ggml.add_space_prefix", 7, vec![p as u8]);
    }
    w.bytes()
}

#[test]
fn sentencepiece_rules_on_a_tiny_vocabulary() {
    let bytes = tiny_vocabulary("gemma3", Some(false));
    let tok = TextTokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    assert_eq!((tok.bos, tok.eos), (Some(2), Some(1)));
    let byte = |b: u8| 11 + b as u32;
    for (text, want) in [
        ("ab ab", vec![7, 8]),
        // `ab` merges before `▁ab` before `▁▁` (the stored "  "), by their order in the file.
        ("ab  ab", vec![7, 6, 8]),
        ("é", vec![byte(0xC3), byte(0xA9)]),
        ("<bos>a\nb", vec![2, 4, 10, 5]),
        (" ", vec![6]),
    ] {
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(tok.decode(&got).unwrap(), text);
    }
    // llama.cpp's flag, when a file sets it, puts a `▁` before the text.
    let bytes = tiny_vocabulary("gemma3", Some(true));
    let tok = TextTokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    assert_eq!(tok.encode("ab").unwrap(), vec![8]);
    // Other SentencePiece models place the prefix space and order merges their own ways.
    let bytes = tiny_vocabulary("llama", None);
    let e = TextTokenizer::from_gguf(&Gguf::parse(&bytes).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("SentencePiece vocabulary in a `llama` file"),
        "{e}"
    );
}

/// The real gemma-3-270m Q4_K_M file (250 MB, not fetched by CI): opt in by pointing
/// `SAESCOPE_GEMMA_GGUF` at it. `TextModel::open` (the commands' way in) takes it whole, its tokenizer gives the reference
/// ids, and its logits match transformers' on the same file dequantized to f32
/// (reference/make_gemma_logits.py).
#[test]
fn real_gemma3_file_matches_transformers() {
    use saescope_activations::hooks::Hooks;
    use saescope_activations::{Compute, TextModel};
    use std::time::Instant;
    use tch::{Device, Tensor};

    let Some(path) = common::opt_in_file(
        "SAESCOPE_GEMMA_GGUF",
        "real_gemma3_file_matches_transformers",
        "gemma-3-270m-q4_k_m.gguf",
    ) else {
        return;
    };
    let t = Instant::now();
    // What the commands open: the weights, the file's own tokenizer, and the manifest's record.
    let opened = TextModel::open(&path, Device::Cpu, Compute::F32).unwrap();
    eprintln!("opened in {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(opened.model.architecture(), "gemma3");
    assert_eq!(opened.info.name, "Gemma 3 270m");
    assert_eq!(
        opened.info.sha256.as_deref(),
        Some("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
    );
    let vocabulary = opened.vocabulary();
    assert_eq!(vocabulary.len(), 262144);
    assert_eq!(
        (vocabulary[2].as_str(), vocabulary[818].as_str()),
        ("<bos>", "The")
    );
    let tok = &opened.tokenizer;
    let (texts, tokens) = check_ids(tok);
    eprintln!("tokenizer: {texts} texts, {tokens} tokens, all equal");

    let want: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/gemma3-logits.json")).unwrap();
    let stride = want["stride"].as_i64().unwrap();
    let mut worst = 0f32;
    for (i, p) in want["prompts"].as_array().unwrap().iter().enumerate() {
        let text = p["text"].as_str().unwrap();
        let ids: Vec<i64> = serde_json::from_value(p["ids"].clone()).unwrap();
        let mut ours: Vec<i64> = vec![tok.bos.unwrap() as i64];
        ours.extend(tok.encode(text).unwrap().into_iter().map(i64::from));
        assert_eq!(ours, ids, "prompt {i} ids");
        let input = Tensor::from_slice(&ids).unsqueeze(0);
        let logits = opened
            .model
            .forward(&input, &mut Hooks::new(), true)
            .unwrap()
            .unwrap()
            .get(0);
        assert_eq!(logits.size(), [ids.len() as i64, 262144]);
        let err = common::fixture_logit_error(&logits, p, stride, i);
        let greedy = logits.get(-1).argmax(0, false).int64_value(&[]);
        assert_eq!(greedy, p["greedy_next_id"].as_i64().unwrap(), "prompt {i}");
        eprintln!("prompt {i}: max abs logit error {err:.2e}");
        worst = worst.max(err);
    }
    assert!(worst < 1e-4, "max abs logit error {worst}");
    drop(opened);

    // bf16 compute: the same greedy tokens, logits near (as the README states for SmolLM2).
    let bf16 = TextModel::open(&path, Device::Cpu, Compute::Bf16).unwrap();
    let mut worst_bf16 = 0f32;
    for (i, p) in want["prompts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<i64> = serde_json::from_value(p["ids"].clone()).unwrap();
        let input = Tensor::from_slice(&ids).unsqueeze(0);
        let last = bf16
            .model
            .forward(&input, &mut Hooks::new(), true)
            .unwrap()
            .unwrap()
            .get(0)
            .get(-1)
            .to_kind(tch::Kind::Float);
        let greedy = last.argmax(0, false).int64_value(&[]);
        assert_eq!(
            greedy,
            p["greedy_next_id"].as_i64().unwrap(),
            "bf16 prompt {i}"
        );
        let strided: Vec<f32> = serde_json::from_value(p["last_strided_logits"].clone()).unwrap();
        let got: Vec<f32> = Vec::try_from(last.slice(0, 0, None, stride).contiguous()).unwrap();
        for (g, w) in got.iter().zip(&strided) {
            worst_bf16 = worst_bf16.max((g - w).abs());
        }
    }
    eprintln!("bf16: same greedy tokens, max abs logit error {worst_bf16:.2}");
    assert!(worst_bf16 < 1.0, "bf16 max abs logit error {worst_bf16}");
    eprintln!("real file checked in {:.1} s", t.elapsed().as_secs_f64());
}
