//! Qwen2.5's byte-level BPE vocabulary (pre-tokenizer `qwen2`), rebuilt from GGUF metadata, gives
//! the ids transformers gives (reference/make_qwen_fixture.py). The vocabulary and merges come
//! from a metadata-only copy of the Qwen2.5-Coder-0.5B-Instruct GGUF's tokenizer tables (1.7 MB
//! gzipped), so this runs without the 490 MB file.

use flate2::read::GzDecoder;
use saescope_activations::gguf::Gguf;
use saescope_activations::tokenizer::TextTokenizer;
use std::io::Read;

fn vocabulary_gguf() -> Vec<u8> {
    let gz = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/qwen2-vocab.gguf.gz"
    ))
    .unwrap();
    let mut bytes = Vec::new();
    GzDecoder::new(&gz[..]).read_to_end(&mut bytes).unwrap();
    bytes
}

fn reference() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/qwen2-tokens.json")).unwrap()
}

/// Every text's ids against the reference; returns (texts, tokens) compared.
fn check_ids(tok: &TextTokenizer) -> (usize, usize) {
    let want = reference();
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
        // Byte-level BPE covers every byte, and special tokens decode as written.
        assert_eq!(tok.decode(&got).unwrap(), text, "decoding {text:?}");
        texts += 1;
        tokens += ids.len();
    }
    (texts, tokens)
}

#[test]
fn qwen2_vocabulary_gives_the_reference_ids() {
    let bytes = vocabulary_gguf();
    let tok = TextTokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    assert_eq!(tok.name, "gguf:gpt2/qwen2");
    let (texts, tokens) = check_ids(&tok);
    assert_eq!((texts, tokens), (25, 354));
    // Chat markers and the document separator stay whole.
    for (marker, id) in [
        ("<|endoftext|>", 151643),
        ("<|im_start|>", 151644),
        ("<|im_end|>", 151645),
    ] {
        assert_eq!(tok.encode(marker).unwrap(), vec![id], "{marker}");
    }
}
