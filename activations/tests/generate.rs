//! Generation against the plain forward pass: cached decoding of left-padded batches gives the
//! logits a full recompute of each prompt alone gives, for every family (windows, soft caps,
//! partial rotary and learned positions included); batched generation equals one prompt at a
//! time; the checks run before any work.

use saescope_activations::generate::{GenerateConfig, HookScope, StopReason, generate};
use saescope_activations::hooks::Hooks;
use saescope_activations::kv_cache::KvCache;
use saescope_activations::model::Model;
use saescope_activations::sampler::Sampling;
use tch::{Device, Kind, Tensor};

mod common;
use common::hf_fixture;

const FAMILIES: [&str; 8] = [
    "llama", "gpt2", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "neox",
];

fn load(name: &str) -> Model {
    Model::load(&hf_fixture(name), Device::Cpu, Kind::Float)
        .unwrap()
        .model
}

/// Prompts of different lengths, and a fixed continuation fed one token at a time.
fn prompts() -> (Vec<Vec<i64>>, Vec<Vec<i64>>) {
    (
        vec![
            vec![5, 17, 99, 3, 42, 8, 127],
            vec![7, 120],
            vec![1, 2, 3, 4],
        ],
        vec![
            vec![9, 33, 64, 2, 11, 90, 4],
            vec![100, 3, 3, 50, 7, 8, 1],
            vec![60, 61, 62, 63, 64, 65, 66],
        ],
    )
}

/// The logits of each prompt's last position and of each fed token, from the cache: prefill
/// left-padded, then one token per step. Returns [prompt][step] rows of logits.
fn cached_logits(m: &Model, prompts: &[Vec<i64>], fed: &[Vec<i64>]) -> Vec<Vec<Vec<f32>>> {
    let n = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![];
    let mut valid = vec![];
    for p in prompts {
        let pad = width - p.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(p.iter().copied()));
        valid.extend((0..width).map(|j| j >= pad));
    }
    let shape = [n as i64, width as i64];
    let mut cache = KvCache::new(m.n_layers(), n, Device::Cpu);
    cache
        .begin(&Tensor::from_slice(&valid).view(shape), m.ctx_len())
        .unwrap();
    let mut hooks = Hooks::new();
    let first = m
        .forward_cached(
            &Tensor::from_slice(&ids).view(shape),
            &mut hooks,
            &mut cache,
        )
        .unwrap()
        .select(1, width as i64 - 1);
    let mut out: Vec<Vec<Vec<f32>>> = Vec::<Vec<f32>>::try_from(first)
        .unwrap()
        .into_iter()
        .map(|row| vec![row])
        .collect();
    for step in 0..fed[0].len() {
        let next: Vec<i64> = fed.iter().map(|f| f[step]).collect();
        cache
            .begin(
                &Tensor::ones([n as i64, 1], (Kind::Bool, Device::Cpu)),
                m.ctx_len(),
            )
            .unwrap();
        let logits = m
            .forward_cached(
                &Tensor::from_slice(&next).view([n as i64, 1]),
                &mut hooks,
                &mut cache,
            )
            .unwrap()
            .select(1, 0);
        for (i, row) in Vec::<Vec<f32>>::try_from(logits)
            .unwrap()
            .into_iter()
            .enumerate()
        {
            out[i].push(row);
        }
    }
    out
}

/// The same positions from one full forward pass of each prompt and its continuation alone.
fn full_logits(m: &Model, prompt: &[i64], fed: &[i64]) -> Vec<Vec<f32>> {
    let all: Vec<i64> = prompt.iter().chain(fed).copied().collect();
    let logits = m
        .forward(
            &Tensor::from_slice(&all).view([1, -1]),
            &mut Hooks::new(),
            true,
        )
        .unwrap()
        .unwrap()
        .select(0, 0);
    let rows = Vec::<Vec<f32>>::try_from(logits).unwrap();
    rows[prompt.len() - 1..].to_vec()
}

#[test]
fn cached_decoding_matches_a_full_recompute() {
    let (prompts, fed) = prompts();
    for name in FAMILIES {
        let m = load(name);
        let cached = cached_logits(&m, &prompts, &fed);
        let mut worst = 0f32;
        for (i, p) in prompts.iter().enumerate() {
            let full = full_logits(&m, p, &fed[i]);
            assert_eq!(cached[i].len(), full.len());
            for (step, (c, f)) in cached[i].iter().zip(&full).enumerate() {
                let err = common::max_abs_diff(c, f);
                assert!(err < 1e-4, "{name} prompt {i} step {step}: {err}");
                worst = worst.max(err);
            }
        }
        eprintln!("{name}: cached vs full, max abs logit error {worst:.1e}");
    }
}

fn greedy(max_new_tokens: usize) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens,
        sampling: Sampling::default(),
        stop: vec![],
    }
}

fn run(m: &Model, prompts: &[Vec<u32>], cfg: &GenerateConfig) -> Vec<Vec<u32>> {
    generate(
        m,
        prompts,
        cfg,
        &mut Hooks::new(),
        HookScope::All,
        &mut |_, _| {},
    )
    .unwrap()
    .into_iter()
    .map(|c| c.token_ids)
    .collect()
}

/// Greedy: each prompt of a left-padded batch continues as it does alone. Sampled: as it does
/// with other prompts (of other lengths) beside it at the same index, whose random stream it
/// keeps.
#[test]
fn a_batch_generates_what_each_prompt_generates_alone() {
    let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 99, 3, 42, 8], vec![7], vec![1, 2, 3, 4]];
    let sampled = GenerateConfig {
        sampling: Sampling {
            temperature: 0.8,
            top_p: Some(0.9),
            seed: 3,
            ..Sampling::default()
        },
        ..greedy(20)
    };
    for name in FAMILIES {
        let m = load(name);
        let batch = run(&m, &prompts, &greedy(20));
        for (i, p) in prompts.iter().enumerate() {
            let alone = run(&m, std::slice::from_ref(p), &greedy(20)).remove(0);
            assert_eq!(batch[i], alone, "{name} prompt {i}, greedy");
        }
        let batch = run(&m, &prompts, &sampled);
        for (i, p) in prompts.iter().enumerate() {
            let mut others = vec![vec![9u32, 9, 9, 9, 9, 9, 9, 9, 9]; prompts.len()];
            others[i] = p.clone();
            let beside = run(&m, &others, &sampled).swap_remove(i);
            assert_eq!(batch[i], beside, "{name} prompt {i}, sampled");
        }
        assert!(batch.iter().all(|c| c.len() == 20));
    }
}

#[test]
fn generation_stops_at_a_stop_token_and_at_the_limit() {
    let m = load("llama");
    let prompts = vec![vec![5u32, 17, 99]];
    let free = run(&m, &prompts, &greedy(12)).remove(0);
    let stop_at = free[4];
    let first = free.iter().position(|&t| t == stop_at).unwrap();
    let cfg = GenerateConfig {
        stop: vec![stop_at],
        ..greedy(12)
    };
    let out = generate(
        &m,
        &prompts,
        &cfg,
        &mut Hooks::new(),
        HookScope::All,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out[0].token_ids, free[..=first]);
    assert_eq!(out[0].stop, StopReason::StopToken);
    let out = generate(
        &m,
        &prompts,
        &greedy(3),
        &mut Hooks::new(),
        HookScope::All,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        (out[0].token_ids.len(), out[0].stop),
        (3, StopReason::MaxTokens)
    );
}

#[test]
fn bad_requests_are_refused_before_any_work() {
    let m = load("gpt2");
    let err = |prompts: Vec<Vec<u32>>, cfg: GenerateConfig| {
        generate(
            &m,
            &prompts,
            &cfg,
            &mut Hooks::new(),
            HookScope::All,
            &mut |_, _| panic!("no step may run"),
        )
        .unwrap_err()
        .to_string()
    };
    assert!(err(vec![], greedy(4)).contains("no prompt"));
    assert!(err(vec![vec![1], vec![]], greedy(4)).contains("prompt 2 is empty"));
    assert!(err(vec![vec![1]], greedy(0)).contains("max new tokens is 0"));
    let long = vec![1u32; m.ctx_len()];
    let e = err(vec![long], greedy(4));
    assert!(e.contains(&format!("context of {}", m.ctx_len())), "{e}");
    let e = err(vec![vec![100_000]], greedy(4));
    assert!(
        e.contains("token id 100000 is outside the vocabulary"),
        "{e}"
    );
    let hot = GenerateConfig {
        sampling: Sampling {
            temperature: -1.0,
            ..Sampling::default()
        },
        ..greedy(4)
    };
    assert!(err(vec![vec![1]], hot).contains("temperature -1"));
}

fn fixture() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/generate.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Greedy continuations and each step's top-5 logits against transformers' `generate`
/// (reference/make_generate_fixture.py): returns the largest top-5 logit error.
fn check_greedy(m: &Model, case: &serde_json::Value, what: &str) -> f32 {
    let prompt = ids(&case["prompt_ids"]);
    let want = ids(&case["new_ids"]);
    let mut steps: Vec<Vec<f32>> = vec![];
    let out = generate(
        m,
        &[prompt],
        &greedy(want.len()),
        &mut Hooks::new(),
        HookScope::All,
        &mut |_, logits| steps.push(Vec::<f32>::try_from(logits.select(0, 0)).unwrap()),
    )
    .unwrap()
    .remove(0);
    assert_eq!(out.token_ids, want, "{what}");
    let mut worst = 0f32;
    for (step, row) in steps.iter().enumerate() {
        let top: Vec<u32> = ids(&case["top5_ids"][step]);
        let logits: Vec<f32> = serde_json::from_value(case["top5_logits"][step].clone()).unwrap();
        for (t, l) in top.iter().zip(&logits) {
            worst = worst.max((row[*t as usize] - l).abs());
        }
    }
    worst
}

/// The bundled SmolLM2-135M, 8 prompts (with and without BOS), 40 new tokens each, no stop
/// token (transformers' EOS turned off too), and tiny random GPT-2, Qwen3 (its window of 4 passed
/// many times), Gemma 2 and NeoX checkpoints, 32 tokens from two prompts.
#[test]
fn greedy_generation_matches_transformers() {
    let f = fixture();
    let path = common::cache().join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let m = Model::load(&path, Device::Cpu, Kind::Float).unwrap().model;
    let mut worst = 0f32;
    for (i, case) in f["smollm2"]["cases"].as_array().unwrap().iter().enumerate() {
        worst = worst.max(check_greedy(&m, case, &format!("smollm2 case {i}")));
    }
    // transformers' own cached and uncached logits differ by up to 6.5e-5 here.
    assert!(worst < 3e-4, "smollm2: top-5 logit error {worst}");
    eprintln!("smollm2: 8 x 40 tokens equal, top-5 logits within {worst:.1e}");
    for name in ["gpt2", "qwen3", "gemma2", "neox"] {
        let m = load(name);
        let mut worst = 0f32;
        for (i, case) in f["tiny"][name]["cases"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            worst = worst.max(check_greedy(&m, case, &format!("{name} case {i}")));
        }
        assert!(worst < 1e-4, "{name}: top-5 logit error {worst}");
        eprintln!("{name}: 2 x 32 tokens equal, top-5 logits within {worst:.1e}");
    }
}

/// The bundled model's chat template, from its GGUF file, renders two conversations as
/// transformers' `apply_chat_template` does, to the same ids; greedy answers stopped at EOS are
/// transformers' too.
#[test]
fn chat_prompts_match_transformers() {
    use saescope_activations::chat::Message;
    let f = fixture();
    let path = common::cache().join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let loaded = Model::load(&path, Device::Cpu, Kind::Float).unwrap();
    let tokenizer = loaded.tokenizer.unwrap();
    let chat = tokenizer.chat().unwrap();
    let reference = &f["smollm2_chat"];
    assert_eq!(chat.source, reference["chat_template"].as_str().unwrap());
    let eos = tokenizer.eos.unwrap();
    assert_eq!(eos as u64, reference["eos_id"].as_u64().unwrap());
    for (i, c) in reference["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        let text = chat.render(&messages, true).unwrap();
        assert_eq!(text, c["rendered"].as_str().unwrap(), "conversation {i}");
        let prompt = tokenizer.encode(&text).unwrap();
        assert_eq!(prompt, ids(&c["prompt_ids"]), "conversation {i}");
        let want = ids(&c["new_ids"]);
        let cfg = GenerateConfig {
            stop: vec![eos],
            ..greedy(reference["max_new_tokens"].as_u64().unwrap() as usize)
        };
        let out = generate(
            &loaded.model,
            &[prompt],
            &cfg,
            &mut Hooks::new(),
            HookScope::All,
            &mut |_, _| {},
        )
        .unwrap()
        .remove(0);
        assert_eq!(out.token_ids, want, "conversation {i}");
        let stopped = c["stopped_at_eos"].as_bool().unwrap();
        assert_eq!(
            out.stop == StopReason::StopToken,
            stopped,
            "conversation {i}"
        );
    }
    let e = Model::load(&hf_fixture("gpt2"), Device::Cpu, Kind::Float)
        .unwrap()
        .tokenizer
        .map(|t| t.chat().unwrap_err().to_string());
    assert!(e.is_none_or(|e| e.contains("has no chat template")));
}

/// Hooks act during generation on the positions being computed: an added zero changes
/// nothing; with `NewTokens` the prompt runs clean, so the first token's logits are the clean
/// ones and later steps differ; with `All` the first step already differs. Captures see each
/// step's new positions.
#[test]
fn hooks_act_during_generation_where_asked() {
    use saescope_activations::hooks::{HookKind, HookPoint, Intervention};
    let m = load("llama");
    let point = HookPoint::new(1, HookKind::ResidPost);
    let prompts = vec![vec![5u32, 17, 99, 3]];
    let steps = |hooks: &mut Hooks, scope: HookScope| {
        let mut seen: Vec<Vec<f32>> = vec![];
        let out = generate(&m, &prompts, &greedy(4), hooks, scope, &mut |_, l| {
            seen.push(Vec::<f32>::try_from(l.select(0, 0)).unwrap())
        })
        .unwrap();
        (out[0].token_ids.clone(), seen)
    };
    let (clean_ids, clean) = steps(&mut Hooks::new(), HookScope::All);
    let d = m.hook_shape(HookKind::ResidPost)[0] as i64;
    let zero = Tensor::zeros([d], (Kind::Float, Device::Cpu));
    let (ids, same) = steps(
        &mut Hooks::new().intervene(point, Intervention::Add(zero)),
        HookScope::All,
    );
    assert_eq!((ids, same), (clean_ids.clone(), clean.clone()));
    let push = || Intervention::Add(Tensor::ones([d], (Kind::Float, Device::Cpu)) * 3.0);
    let (_, new_only) = steps(
        &mut Hooks::new().intervene(point, push()),
        HookScope::NewTokens,
    );
    assert_eq!(new_only[0], clean[0], "the prompt ran clean");
    assert!(common::max_abs_diff(&new_only[1], &clean[1]) > 1e-3);
    let (_, all) = steps(&mut Hooks::new().intervene(point, push()), HookScope::All);
    assert!(common::max_abs_diff(&all[0], &clean[0]) > 1e-3);
    // A capture holds every position computed, prompts left-padded then one column per token
    // fed back; each row's real columns equal a plain forward pass over its prompt and tokens.
    let two = vec![vec![5u32, 17, 99, 3], vec![8u32, 40]];
    let mut capture = Hooks::new().capture(point);
    let out = generate(
        &m,
        &two,
        &greedy(3),
        &mut capture,
        HookScope::All,
        &mut |_, _| {},
    )
    .unwrap();
    let got = capture.take(point).unwrap();
    assert_eq!(got.size(), [2, 4 + 2, d]);
    for (i, p) in two.iter().enumerate() {
        let fed = out[i].token_ids.len() - 1;
        let mut ids: Vec<i64> = p.iter().map(|&t| t as i64).collect();
        ids.extend(out[i].token_ids[..fed].iter().map(|&t| t as i64));
        let mut plain = Hooks::new().capture(point);
        m.forward(&Tensor::from_slice(&ids).view([1, -1]), &mut plain, false)
            .unwrap();
        let want = plain.take(point).unwrap().squeeze_dim(0);
        let row = got.get(i as i64);
        let real = Tensor::cat(
            &[
                row.narrow(0, 4 - p.len() as i64, p.len() as i64),
                row.narrow(0, 4, fed as i64),
            ],
            0,
        );
        let err = common::max_abs_diff(
            &Vec::<f32>::try_from(real.reshape([-1])).unwrap(),
            &Vec::<f32>::try_from(want.reshape([-1])).unwrap(),
        );
        assert!(err < 1e-4, "row {i}: {err}");
    }
    // With the prompts left alone, only the new columns are captured.
    let mut capture = Hooks::new().capture(point);
    generate(
        &m,
        &two,
        &greedy(3),
        &mut capture,
        HookScope::NewTokens,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(capture.take(point).unwrap().size(), [2, 2, d]);
}
