//! Qwen2.5's byte-level BPE vocabulary (pre-tokenizer `qwen2`), rebuilt from GGUF metadata, gives
//! the ids transformers gives (reference/make_qwen_fixture.py). The vocabulary and merges come
//! from a metadata-only copy of the Qwen2.5-Coder-0.5B-Instruct GGUF's tokenizer tables (1.7 MB
//! gzipped), so this runs without the 490 MB file.

use saescope_activations::gguf::Gguf;
use saescope_activations::tokenizer::TextTokenizer;

mod common;

fn vocabulary_gguf() -> Vec<u8> {
    common::vocabulary_gguf("qwen2")
}

fn check_ids(tok: &TextTokenizer) -> (usize, usize) {
    common::check_reference_ids("qwen2", tok)
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

/// The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M file (490 MB, not fetched by CI): opt in by
/// pointing `SAESCOPE_QWEN_GGUF` at it. `TextModel::open` (the commands' way in) takes it whole,
/// its tokenizer gives the reference ids, and its logits and greedy tokens match transformers' on
/// the same file dequantized to f32 (reference/make_qwen_logits.py).
#[test]
fn real_qwen2_file_matches_transformers() {
    use saescope_activations::hooks::Hooks;
    use saescope_activations::{Compute, TextModel};
    use std::time::Instant;
    use tch::{Device, Tensor};

    let Some(path) = common::opt_in_file(
        "SAESCOPE_QWEN_GGUF",
        "real_qwen2_file_matches_transformers",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ) else {
        return;
    };
    let t = Instant::now();
    let opened = TextModel::open(&path, Device::Cpu, Compute::F32).unwrap();
    eprintln!("opened in {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(opened.model.architecture(), "qwen2");
    assert_eq!(opened.model.n_layers(), 24);
    assert_eq!(
        opened.info.sha256.as_deref(),
        Some("1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    );
    let vocabulary = opened.vocabulary();
    assert_eq!(vocabulary.len(), 151936);
    assert_eq!(
        (vocabulary[151644].as_str(), vocabulary[785].as_str()),
        ("<|im_start|>", "The")
    );
    let tok = &opened.tokenizer;
    let (texts, tokens) = check_ids(tok);
    eprintln!("tokenizer: {texts} texts, {tokens} tokens, all equal");

    let want: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/qwen2-logits.json")).unwrap();
    let stride = want["stride"].as_i64().unwrap();
    let mut worst = 0f32;
    for (i, p) in want["prompts"].as_array().unwrap().iter().enumerate() {
        let text = p["text"].as_str().unwrap();
        let ids: Vec<i64> = serde_json::from_value(p["ids"].clone()).unwrap();
        // No BOS: the file says not to add one, and neither transformers nor llama.cpp does.
        let ours: Vec<i64> = tok
            .encode(text)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(ours, ids, "prompt {i} ids");
        let t_prompt = Instant::now();
        let input = Tensor::from_slice(&ids).unsqueeze(0);
        let logits = opened
            .model
            .forward(&input, &mut Hooks::new(), true)
            .unwrap()
            .unwrap()
            .get(0);
        let forward_s = t_prompt.elapsed().as_secs_f64();
        assert_eq!(logits.size(), [ids.len() as i64, 151936]);
        let err = common::fixture_logit_error(&logits, p, stride, i);
        // Greedy decoding, one full forward pass a step (no cache), as transformers' generate.
        let want_steps: Vec<i64> = serde_json::from_value(p["greedy_ids"].clone()).unwrap();
        let mut seq = ids.clone();
        for _ in 0..want_steps.len() {
            let input = Tensor::from_slice(&seq).unsqueeze(0);
            let next = opened
                .model
                .forward(&input, &mut Hooks::new(), true)
                .unwrap()
                .unwrap()
                .get(0)
                .get(-1)
                .argmax(0, false)
                .int64_value(&[]);
            seq.push(next);
        }
        assert_eq!(
            &seq[ids.len()..],
            &want_steps[..],
            "prompt {i} greedy tokens"
        );
        let steps: Vec<u32> = want_steps.iter().map(|&t| t as u32).collect();
        // 1e-4, or the reference's own f32 rounding error where that is larger (the chat
        // prompt: its first token's activations run to thousands).
        let rounding = p["reference_f32_error"].as_f64().unwrap() as f32;
        eprintln!(
            "prompt {i}: {} tokens, forward {forward_s:.2} s, max abs logit error {err:.2e} \
             (transformers f32 vs f64 {rounding:.2e}), greedy {:?}",
            ids.len(),
            tok.decode(&steps).unwrap()
        );
        assert!(
            err < rounding.max(1e-4),
            "prompt {i}: max abs logit error {err}"
        );
        worst = worst.max(err);
    }
    eprintln!("max abs logit error over all prompts {worst:.2e}");
    eprintln!("real file checked in {:.1} s", t.elapsed().as_secs_f64());
}
