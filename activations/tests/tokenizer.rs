//! The tokenizer rebuilt from the bundled GGUF gives the ids that transformers gives
//! (reference/make_model_fixture.py), digits and non-ASCII text included.

use saescope_activations::gguf::Gguf;
use saescope_activations::tokenizer::TextTokenizer;
use std::path::PathBuf;

fn tokenizer() -> TextTokenizer {
    let cache = std::env::var_os("SAESCOPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/saescope")
        });
    let path = cache.join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run ./scripts/test or `saescope setup` first)",
            path.display()
        )
    });
    TextTokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap()
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
