//! Evaluation benchmark: `eval`'s three runs per batch (clean, spliced, ablated) on the bundled
//! SmolLM2-135M, for residual hooks early, mid and late in its 30 layers, two ways in one run:
//! - whole passes: every run from the embedding, the three log-probability tensors held at once
//!   (how `eval` worked before the spliced and ablated runs started at the hook);
//! - from the hook: [`splice_batch`], whose changed runs start at the hook's block from the clean
//!   residual stream;
//!
//! each first under glibc's default allocator settings, then under [`keep_freed_memory`] (what
//! the `saescope` binary sets at start), and prints tokens/s (the better of two timings after a
//! warm-up batch), the speed-up over whole passes under the defaults, and the largest difference
//! between the two ways' CE and KL figures. A random TopK dictionary of 4,096
//! latents (k = 32) stands in for a trained one: the passes cost the same.
//!   cargo run --release -p saescope-analysis --example bench_eval [-- TOKENS [LAYER,...]]

use saescope_activations::assets;
use saescope_activations::corpus::CorpusSource;
use saescope_activations::harvest::Packer;
use saescope_activations::hooks::{HookKind, HookPoint, Hooks, Intervention};
use saescope_activations::model::{Compute, Model, TextModel};
use saescope_analysis::splice::{SpliceAccumulator, SpliceOptions, splice_batch};
use saescope_kernels::keep_freed_memory;
use saescope_sae::Dictionary;
use saescope_sae::seeded::Seeded;
use saescope_sae::topk::{Selection, TopKSae};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

mod machine;
use machine::cpu;

const BATCH: usize = 8; // eval's default contexts per batch
const CTX: usize = 128;

/// The earlier method, kept here as the reference: three whole passes, BOS kept clean. Returns
/// the summed CE of each run and the summed KL of the spliced and ablated runs.
fn whole_passes(m: &Model, dict: &dyn Dictionary, ids: &Tensor, point: HookPoint) -> [f64; 5] {
    let _g = tch::no_grad_guard();
    let (b, t) = ids.size2().unwrap();
    let log_probs = |h: &mut Hooks| {
        let out = m.forward(ids, h, true).unwrap().unwrap();
        out.to_kind(Kind::Float).log_softmax(-1, Kind::Float)
    };
    let mut h = Hooks::new().capture(point);
    let clean = log_probs(&mut h);
    let x = h.take(point).unwrap();
    let flat = x.reshape([b * t, -1]);
    let rows = Tensor::arange(b * t, (Kind::Int64, Device::Cpu))
        .remainder(t)
        .ne(0)
        .nonzero()
        .squeeze_dim(1);
    let x_eval = flat.index_select(0, &rows);
    let (_, recon) = dict.reconstruct(&x_eval);
    let with = |v: &Tensor| flat.index_copy(0, &rows, v).reshape(x.size().as_slice());
    let run = |v: Tensor| log_probs(&mut Hooks::new().intervene(point, Intervention::Replace(v)));
    let spliced = run(with(&recon));
    let ablated = run(with(&x_eval.zeros_like()));
    let targets = ids.narrow(1, 1, t - 1).unsqueeze(2);
    let ce = |lp: &Tensor| {
        -lp.narrow(1, 0, t - 1)
            .gather(2, &targets, false)
            .sum(Kind::Double)
            .double_value(&[])
    };
    let kl = |lp: &Tensor| {
        (clean.exp() * (&clean - lp))
            .sum(Kind::Double)
            .double_value(&[])
    };
    [
        ce(&clean),
        ce(&spliced),
        ce(&ablated),
        kl(&spliced),
        kl(&ablated),
    ]
}

fn random_topk(rng: &mut Seeded) -> TopKSae {
    let (n, d) = (4096, 576);
    let w = rng.normal(&[n, d], Device::Cpu);
    TopKSae {
        w_enc: &w / 4.0,
        b_enc: Tensor::zeros([n], (Kind::Float, Device::Cpu)),
        w_dec: &w / w.norm_scalaropt_dim(2.0, [1], true),
        b_dec: Tensor::zeros([d], (Kind::Float, Device::Cpu)),
        k: 32,
        selection: Selection::TopK,
        threshold: None,
        bf16_select: false,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let tokens: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let layers: Vec<usize> = args
        .get(2)
        .map(|s| s.split(',').map(|l| l.parse().expect("a layer")).collect())
        .unwrap_or(vec![6, 15, 24]);
    let tm = TextModel::open(&assets::default_model(), Device::Cpu, Compute::F32)?;
    let corpus = CorpusSource::parse("brown", "text")?;
    let mut packer = Packer::new(&corpus, &tm.tokenizer, CTX)?;
    let mut batches = Vec::new();
    for _ in 0..tokens.div_ceil(CTX * BATCH) {
        let mut ids = Vec::new();
        for _ in 0..BATCH {
            ids.extend(
                packer
                    .next_context()?
                    .expect("the corpus is long enough")
                    .ids,
            );
        }
        batches.push(Tensor::from_slice(&ids).view([BATCH as i64, CTX as i64]));
    }
    let n_tokens = batches.len() * BATCH * CTX;
    println!(
        "eval benchmark: SmolLM2-135M f32, {n_tokens} tokens of Brown ({} batches of {BATCH} x {CTX}), {} threads, {}",
        batches.len(),
        tch::get_num_threads(),
        cpu()
    );
    let mut rng = Seeded::new(0);
    let dicts: Vec<(HookPoint, TopKSae)> = layers
        .iter()
        .map(|&l| {
            (
                HookPoint::new(l, HookKind::ResidPost),
                random_topk(&mut rng),
            )
        })
        .collect();
    // One measurement: every batch once, after a warm-up batch; the best of two.
    let measure = |point: HookPoint, dict: &TopKSae, from_hook: bool| -> (f64, [f64; 5]) {
        let opts = SpliceOptions {
            point,
            exclude_bos: true,
            head: None,
        };
        let once = |batches: &[Tensor]| {
            let t0 = Instant::now();
            let mut sums = [0.0; 5];
            let mut acc = SpliceAccumulator::new(576, 4096);
            for ids in batches {
                if from_hook {
                    splice_batch(&tm.model, dict, ids, &opts, &mut acc).unwrap();
                } else {
                    let s = whole_passes(&tm.model, dict, ids, point);
                    sums.iter_mut().zip(s).for_each(|(a, b)| *a += b);
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            if from_hook {
                let r = acc.finish(&opts);
                let (p, q) = (r.predictions as f64, n_tokens as f64);
                sums = [
                    r.ce_clean * p,
                    r.ce_spliced * p,
                    r.ce_ablated * p,
                    r.kl_spliced * q,
                    r.kl_ablated * q,
                ];
            }
            (secs, sums)
        };
        once(&batches[..1]);
        let (a, sums) = once(&batches);
        let (b, _) = once(&batches);
        let p = (n_tokens - batches.len() * BATCH) as f64;
        let q = n_tokens as f64;
        (
            n_tokens as f64 / a.min(b),
            [
                sums[0] / p,
                sums[1] / p,
                sums[2] / p,
                sums[3] / q,
                sums[4] / q,
            ],
        )
    };
    let mut first: Vec<[(f64, [f64; 5]); 2]> = Vec::new();
    for phase in 0..2 {
        if phase == 1 {
            assert!(keep_freed_memory(), "glibc refused the allocator settings");
        }
        for (i, (point, dict)) in dicts.iter().enumerate() {
            let row = [measure(*point, dict, false), measure(*point, dict, true)];
            if phase == 0 {
                first.push(row);
                continue;
            }
            let [(a, fa), (b, fb)] = row;
            let [(c, _), (d, _)] = first[i];
            let diff = fa
                .iter()
                .zip(fb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            println!(
                "{point}: tokens/s, default allocator: whole passes {c:.0}, from the hook {d:.0}; kept freed memory: whole passes {a:.0}, from the hook {b:.0}: {:.2}x the first",
                b / c
            );
            println!(
                "  CE clean {:.4} spliced {:.4} ablated {:.4}, KL {:.4} / {:.4}; largest difference between the ways {diff:.1e}",
                fb[0], fb[1], fb[2], fb[3], fb[4]
            );
        }
    }
    Ok(())
}
