//! Generation benchmark: decode tokens/s of the bundled SmolLM2-135M (or a model given) at
//! batch 1 and 16, in f32 and bf16, with the prefill time, and what bounds decoding at batch 1:
//! the bytes of weights read per step against the machine's memory bandwidth (a large copy).
//!
//!   cargo run -p saescope-activations --example bench_generate -- [MODEL] [NEW_TOKENS] [THREADS]
//!
//! Prints one line per setting, then one JSON object per setting for scripts/bench-generate.

use saescope_activations::assets;
use saescope_activations::generate::{GenerateConfig, HookScope, generate};
use saescope_activations::gguf::Gguf;
use saescope_activations::hooks::Hooks;
use saescope_activations::model::{Compute, TextModel};
use saescope_activations::sampler::Sampling;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const PROMPT: &str = "The old lighthouse keeper climbed the stairs every evening, counting the \
    steps as his father had taught him, and at the top he lit the lamp that";

/// Bytes a second of one large copy (read and write), best of three.
fn bandwidth() -> f64 {
    let n = 1i64 << 27; // 512 MB of f32
    let src = Tensor::ones([n], (Kind::Float, Device::Cpu));
    let mut dst = Tensor::zeros([n], (Kind::Float, Device::Cpu));
    (0..3)
        .map(|_| {
            let t = Instant::now();
            dst.copy_(&src);
            2.0 * 4.0 * n as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// Weights in the file: every tensor's element count (the tied embedding counted once, as the
/// unembedding every step reads).
fn parameters(path: &PathBuf) -> Option<f64> {
    let bytes = std::fs::read(path).ok()?;
    let g = Gguf::parse(&bytes).ok()?;
    Some(g.tensors.iter().map(|t| t.numel() as f64).sum())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(assets::default_model);
    let new_tokens: usize = args.get(1).map_or(64, |s| s.parse().expect("NEW_TOKENS"));
    let threads: i32 = args.get(2).map_or(2, |s| s.parse().expect("THREADS"));
    tch::set_num_threads(threads);
    let bw = bandwidth();
    let params = parameters(&path);
    println!(
        "generation benchmark: {}, {new_tokens} new tokens a prompt, greedy, {threads} threads; memory bandwidth {:.1} GB/s (one large copy)",
        path.display(),
        bw / 1e9
    );
    let mut json = vec![];
    for compute in [Compute::F32, Compute::Bf16] {
        let model = TextModel::open(&path, Device::Cpu, compute).expect("the model opens");
        let prompt = model
            .prompt_ids(PROMPT, true)
            .expect("the prompt tokenizes");
        for batch in [1usize, 16] {
            let prompts = vec![prompt.clone(); batch];
            let cfg = GenerateConfig {
                max_new_tokens: new_tokens,
                sampling: Sampling::default(),
                stop: vec![],
            };
            // One warm-up run, then the measured one.
            for measured in [false, true] {
                let start = Instant::now();
                let mut first = None;
                generate(
                    &model.model,
                    &prompts,
                    &cfg,
                    &mut Hooks::new(),
                    HookScope::All,
                    &mut |step, _| {
                        if step == 0 {
                            first = Some(start.elapsed().as_secs_f64());
                        }
                    },
                )
                .expect("generation runs");
                if !measured {
                    continue;
                }
                let total = start.elapsed().as_secs_f64();
                let prefill = first.unwrap_or(0.0);
                // The first token comes from the prefill; each later one from a decode step.
                let steps = new_tokens.saturating_sub(1) as f64;
                let decode = total - prefill;
                let tok_s = batch as f64 * steps / decode;
                let step_ms = 1e3 * decode / steps;
                let bound = params.map(|p| {
                    let bytes = p * if compute == Compute::Bf16 { 2.0 } else { 4.0 };
                    (bytes, bw / bytes)
                });
                let bound_text = bound
                    .map(|(b, s)| {
                        format!(
                            "; weights {:.0} MB a step, at the copy's bandwidth {s:.0} steps/s",
                            b / 1e6
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "saescope {:<4} batch {batch:>2}: prefill {} tokens {:.0} ms; decode {tok_s:.1} tokens/s ({step_ms:.1} ms a step){bound_text}",
                    compute.name(),
                    prompt.len(),
                    1e3 * prefill
                );
                json.push(serde_json::json!({
                    "dtype": compute.name(),
                    "batch": batch,
                    "prompt_tokens": prompt.len(),
                    "prefill_s": prefill,
                    "decode_tokens_per_s": tok_s,
                    "step_ms": step_ms,
                    "weight_bytes": bound.map(|b| b.0),
                    "bandwidth_bytes_per_s": bw,
                }));
            }
        }
    }
    for j in json {
        println!("{j}");
    }
}
