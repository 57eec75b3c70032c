//! Gemma 3's SentencePiece vocabulary, rebuilt from GGUF metadata, gives the ids transformers
//! gives (reference/make_gemma_fixture.py). The vocabulary comes from a metadata-only copy of the
//! gemma-3-270m GGUF's tokenizer tables (1.9 MB gzipped), so this runs without the 250 MB file.

use flate2::read::GzDecoder;
use saescope_activations::gguf::Gguf;
use saescope_activations::tokenizer::TextTokenizer;
use std::io::Read;

fn vocabulary_gguf() -> Vec<u8> {
    let gz = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gemma3-vocab.gguf.gz"
    ))
    .unwrap();
    let mut bytes = Vec::new();
    GzDecoder::new(&gz[..]).read_to_end(&mut bytes).unwrap();
    bytes
}

fn reference() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/gemma3-tokens.json")).unwrap()
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
        // Byte fallback and `▁` make every text round-trip, special tokens included.
        assert_eq!(tok.decode(&got).unwrap(), text, "decoding {text:?}");
        texts += 1;
        tokens += ids.len();
    }
    (texts, tokens)
}

#[test]
fn gemma3_vocabulary_gives_the_reference_ids() {
    let bytes = vocabulary_gguf();
    let tok = TextTokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
    assert_eq!(tok.name, "gguf:llama/gemma3");
    let (texts, tokens) = check_ids(&tok);
    assert_eq!((texts, tokens), (25, 290));
}
