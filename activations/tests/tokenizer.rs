//! The tokenizer rebuilt from the bundled GGUF gives the ids that transformers gives
//! (reference/make_model_fixture.py), digits and non-ASCII text included.

use saescope_activations::gguf::Gguf;
use saescope_activations::tokenizer::TextTokenizer;
mod common;

fn tokenizer() -> TextTokenizer {
    TextTokenizer::from_gguf(&Gguf::parse(&common::smollm2_gguf()).unwrap()).unwrap()
}

#[test]
fn ids_match_the_reference_tokenizer() {
    let tok = tokenizer();
    assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.name, "gguf:gpt2/smollm");
    let index: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/smollm2/index.json")).unwrap();
    let cases = index["tokenizer"]
        .as_array()
        .unwrap()
        .iter()
        .chain(index["prompts"].as_array().unwrap());
    let mut n = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(tok.decode(&got).unwrap(), text, "decoding {text:?}");
        n += 1;
    }
    assert_eq!(n, 6);
}

#[test]
fn digits_are_split_one_by_one_and_special_tokens_stay_whole() {
    let tok = tokenizer();
    let ids = tok.encode("2026").unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
    let ids = tok.encode("<|im_start|>user").unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is one special token: {ids:?}");
}

/// A Hugging Face tokenizer.json (the bundled MiniLM's WordPiece), against ids from transformers.
#[test]
fn tokenizer_json_files_load() {
    let path = common::cache().join("assets/all-minilm-l6-v2/tokenizer.json");
    let tok = TextTokenizer::from_file(&path)
        .unwrap_or_else(|e| panic!("{e} (run ./scripts/test or `saescope setup` first)"));
    assert_eq!((tok.bos, tok.eos), (Some(101), Some(102)));
    for (text, want) in [
        ("Hello, world!", vec![7592, 1010, 2088, 999]),
        (
            "Sparse autoencoders find features.",
            vec![20288, 8285, 2368, 16044, 2869, 2424, 2838, 1012],
        ),
        ("naïve café 2026", vec![15743, 7668, 16798, 2575]),
    ] {
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
    }
    // The file pads to 128 and truncates; saescope turns both off so documents stay whole.
    let long = "word ".repeat(300);
    assert_eq!(tok.encode(&long).unwrap().len(), 300);
    let missing = TextTokenizer::from_file(std::path::Path::new("/nonexistent/tokenizer.json"));
    assert!(
        missing
            .err()
            .unwrap()
            .to_string()
            .starts_with("/nonexistent/tokenizer.json: ")
    );
}

/// The GGUF's tokenizer written as a tokenizer.json (as `export_tokenizer` does for the GPU
/// check's checkpoint) and read back gives the reference ids of transformers, special tokens
/// and digits included.
#[test]
fn a_gguf_tokenizer_written_as_tokenizer_json_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tokenizer().to_json().unwrap()).unwrap();
    let back = TextTokenizer::from_file(&path).unwrap();
    assert_eq!(back.vocab_size(), 49152);
    let index: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/smollm2/index.json")).unwrap();
    for case in index["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(back.encode(text).unwrap(), want, "{text:?}");
    }
    assert_eq!(
        back.encode("<|im_start|>2026").unwrap(),
        vec![1, 34, 32, 34, 38]
    );
}
