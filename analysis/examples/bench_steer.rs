//! Steering benchmark: what pushing on a feature costs over plain generation, on the bundled
//! model (f32, as `saescope steer` runs it) with a 16,384-feature TopK dictionary (k = 32) at
//! layer 26's residual stream. Greedy, one prompt, NEW_TOKENS new tokens that EOS cannot cut
//! short; plain, add and clamp runs are interleaved ROUNDS times, each round in a different order,
//! and each one's fastest run is kept. The target: steering costs under 10% more than plain generation.
//!   cargo run -p saescope-analysis --example bench_steer [-- NEW_TOKENS [THREADS [ROUNDS]]]

use saescope_activations::generate::{GenerateConfig, HookScope, generate};
use saescope_activations::hooks::Hooks;
use saescope_activations::sampler::Sampling;
use saescope_analysis::steer::{Push, Steering};
use saescope_analysis::{Session, SessionSpec};
use saescope_sae::AnyDictionary;
use saescope_sae::seeded::Seeded;
use saescope_sae::topk::{Selection, TopKSae};
use saescope_store::dictionary::{DictConfig, DictDir};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const PROMPT: &str = "The old lighthouse keeper climbed the stairs every evening, counting the \
    steps as his father had taught him, and at the top he lit the lamp that";
const HOOK: &str = "blocks.26.hook_resid_post";

/// A random TopK dictionary of the usual size over HOOK, saved and opened: its cost per token
/// is that of a trained one of the same shape.
fn session(dir: &std::path::Path) -> Session {
    let mut rng = Seeded::new(3);
    let (n, d) = (16_384, 576);
    let w = rng.normal(&[n, d], Device::Cpu);
    let sae = TopKSae {
        w_enc: &w / 4.0,
        b_enc: rng.normal(&[n], Device::Cpu) * 0.1,
        w_dec: &w / w.norm_scalaropt_dim(2.0, [1], true),
        b_dec: Tensor::zeros([d], (Kind::Float, Device::Cpu)),
        k: 32,
        selection: Selection::TopK,
        threshold: None,
        bf16_select: false,
    };
    let out = DictDir::new(dir.join("dict"));
    let cfg = DictConfig {
        hook_name: Some(HOOK.into()),
        ..DictConfig::default()
    };
    AnyDictionary::TopK(sae)
        .save(&out, &[], cfg)
        .expect("the dictionary saves");
    Session::open(&SessionSpec::new(out.path())).expect("the session opens")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let new_tokens: usize = args.first().map_or(64, |s| s.parse().expect("NEW_TOKENS"));
    let threads: i32 = args.get(1).map_or(2, |s| s.parse().expect("THREADS"));
    let rounds: usize = args.get(2).map_or(6, |s| s.parse().expect("ROUNDS"));
    tch::set_num_threads(threads);
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let s = session(tmp.path());
    let steering = Steering::new(&s, &[7], None, true).expect("feature 7 steers");
    let prompt = s
        .model
        .prompt_ids(PROMPT, true)
        .expect("the prompt tokenizes");
    let cfg = GenerateConfig {
        max_new_tokens: new_tokens,
        sampling: Sampling::default(),
        stop: vec![],
    };
    let pushes: [(&str, Option<Push>); 3] = [
        ("plain", None),
        ("add", Some(Push::Add(4.0))),
        ("clamp", Some(Push::Clamp(5.0))),
    ];
    let mut best = [f64::INFINITY; 3];
    // One warm-up round, then the measured ones.
    for round in 0..=rounds {
        // Each round starts with a different push, so none always follows the same one.
        for i in (0..pushes.len()).map(|j| (j + round) % pushes.len()) {
            let push = &pushes[i].1;
            let mut hooks = match push {
                None => Hooks::new(),
                Some(p) => steering.hooks(*p, None),
            };
            let start = Instant::now();
            generate(
                &s.model.model,
                std::slice::from_ref(&prompt),
                &cfg,
                &mut hooks,
                HookScope::All,
                &mut |_, _| {},
            )
            .expect("generation runs");
            if round > 0 {
                best[i] = best[i].min(start.elapsed().as_secs_f64());
            }
        }
    }
    println!(
        "steering benchmark: bundled model f32, {HOOK}, TopK 16384 x 576 (k 32), {} prompt tokens + {new_tokens} new, {threads} threads, best of {rounds}",
        prompt.len()
    );
    let plain = best[0];
    for (i, (name, _)) in pushes.iter().enumerate() {
        println!(
            "{name:<5}: {:.0} ms, {:.1} tokens/s, {:+.1}% over plain",
            1e3 * best[i],
            new_tokens as f64 / best[i],
            100.0 * (best[i] / plain - 1.0)
        );
    }
    for (i, (name, _)) in pushes.iter().enumerate() {
        println!(
            "{}",
            serde_json::json!({"push": name, "seconds": best[i], "overhead": best[i] / plain - 1.0})
        );
    }
}
