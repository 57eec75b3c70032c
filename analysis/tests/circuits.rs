//! Circuits on the bundled model: it does its four tasks (and not their corruptions); a head's
//! ablation (zero, mean, patching) equals taking its write out of the attention output by
//! hand; heads' writes sum to the attention output; a whole code-overlap run agrees with its
//! own codes and effects recomputed here; bad task files and head lists are named by line.

use saescope_activations::hooks::{HookKind, HookPoint, Hooks, Intervention};
use saescope_activations::model::{Compute, TextModel};
use saescope_analysis::circuits::ablate::{
    Ablation, Pool, ablation_sweep, head_outputs, logit_diffs, task_score,
};
use saescope_analysis::circuits::discover::DiscoverConfig;
use saescope_analysis::circuits::report::{CircuitSpec, GroundTruth, Stage, read_head_list, run};
use saescope_analysis::circuits::task::{
    Task, by_name, greater_than, induction, ioi, read_task_file,
};
use saescope_sae::l1::L1Config;
use saescope_stats::metrics::{auc, spearman};
use saescope_store::circuits::{CodeRow, HeadRow};
use std::collections::HashSet;
use tch::{Kind, Tensor};

mod common;

#[test]
fn the_bundled_model_does_its_four_tasks_and_not_their_corruptions() {
    let (model, tok) = common::model();
    let tasks: [Task; 4] = [
        ioi(&tok, 24, 0).unwrap(),
        greater_than(&tok, 24, 0).unwrap(),
        induction(&tok, 24, 12, (1_000, 20_000), 0).unwrap(),
        by_name("successor", &tok, 24, 0).unwrap(),
    ];
    for task in &tasks {
        let s = task_score(&model, task).unwrap();
        println!("{}: {s:?}", task.name);
        assert!(s.accuracy >= 0.75, "{}: {s:?}", task.name);
        assert!(
            s.logit_diff > s.corrupted_logit_diff + 1.0,
            "{}: {s:?}",
            task.name
        );
        for p in &task.prompts {
            assert_eq!(p.positive.len(), p.negative.len());
            assert_ne!(p.answer, p.wrong);
        }
    }
}

/// Ablating head h of layer l equals subtracting (z_h − fill_h) · W_O[h]ᵀ from that layer's
/// attention output by hand, with z from a clean pass (layers before l do not change): for
/// zero-ablation fill is 0; for mean-ablation, the mean of z_h over every prompt and corruption
/// of the task and every position, averaged here from each pass's captured z.
#[test]
fn a_heads_ablation_equals_removing_its_write_by_hand() {
    let (model, tok) = common::model();
    let task = ioi(&tok, 4, 1).unwrap();
    let [heads, d_head] = model.hook_shape(HookKind::AttnZ)[..] else {
        panic!("heads x d_head")
    };
    let clean: Vec<(&[u32], u32, u32)> = task
        .prompts
        .iter()
        .map(|p| (p.positive.as_slice(), p.answer, p.wrong))
        .collect();
    let base = logit_diffs(&model, &clean, &mut Hooks::new).unwrap();
    let capture = |layer: usize, ids: &[u32]| {
        let point = HookPoint::new(layer, HookKind::AttnZ);
        let input = Tensor::from_slice(&ids.iter().map(|&t| i64::from(t)).collect::<Vec<_>>())
            .view([1, -1]);
        let mut hooks = Hooks::new().capture(point);
        model.forward(&input, &mut hooks, false).unwrap();
        (input, hooks.take(point).unwrap().to_kind(Kind::Float))
    };
    let layers = [0usize, 5, 20];
    for how in [Ablation::Zero, Ablation::Mean, Ablation::Corrupted] {
        let effects = ablation_sweep(&model, &task, how, Some(&layers), &mut |_, _| {}).unwrap();
        assert_eq!(effects.len(), layers.len() * heads);
        for (layer, head) in [(0usize, 0usize), (5, 3), (20, heads - 1)] {
            let w_o = model
                .to_residual(HookPoint::new(layer, HookKind::AttnZ))
                .unwrap()
                .to_kind(Kind::Float)
                .narrow(1, (head * d_head) as i64, d_head as i64);
            // Per prompt for patching (its corruption's z at that head), else one for all.
            let fill = |i: usize| match how {
                Ablation::Zero => Tensor::zeros([d_head as i64], (Kind::Float, tch::Device::Cpu)),
                Ablation::Corrupted => capture(layer, &task.prompts[i].negative)
                    .1
                    .get(0)
                    .select(1, head as i64),
                Ablation::Mean => {
                    let all: Vec<Tensor> = task
                        .prompts
                        .iter()
                        .flat_map(|p| [&p.positive, &p.negative])
                        .map(|ids| capture(layer, ids).1.get(0).select(1, head as i64))
                        .collect();
                    Tensor::cat(&all, 0).mean_dim(0, false, Kind::Float)
                }
            };
            let mut by_hand = 0.0;
            for (i, (ids, answer, wrong)) in clean.iter().enumerate() {
                let (input, z) = capture(layer, ids);
                let write = (z.select(2, head as i64) - fill(i)).matmul(&w_o.transpose(0, 1));
                let mut hooks = Hooks::new().intervene(
                    HookPoint::new(layer, HookKind::AttnOut),
                    Intervention::Map(Box::new(move |x| x - write.to_kind(x.kind()))),
                );
                let logits = model.forward(&input, &mut hooks, true).unwrap().unwrap();
                let last = logits
                    .get(0)
                    .get(ids.len() as i64 - 1)
                    .to_kind(Kind::Double);
                by_hand += last.double_value(&[i64::from(*answer)])
                    - last.double_value(&[i64::from(*wrong)]);
            }
            let want = (by_hand - base.iter().sum::<f64>()) / 4.0;
            let got = effects
                .iter()
                .find(|e| e.layer == layer && e.head == head)
                .unwrap()
                .effect;
            assert!(
                (got - want).abs() < 1e-3,
                "{how:?} layer {layer} head {head}: {got} vs {want}"
            );
        }
        // Some head matters: the largest effect is far from zero.
        let largest = effects.iter().map(|e| e.effect.abs()).fold(0.0, f64::max);
        assert!(largest > 0.1, "{how:?}: {largest}");
    }
    let e = ablation_sweep(&model, &task, Ablation::Zero, Some(&[99]), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 99: the model has 30 layers"), "{e}");
}

/// The heads' writes of a layer, pooled, sum to its attention output pooled the same way
/// (Llama's output projection has no bias).
#[test]
fn head_outputs_sum_to_the_attention_output() {
    let (model, tok) = common::model();
    let task = ioi(&tok, 2, 3).unwrap();
    let prompts: Vec<&[u32]> = task.prompts.iter().map(|p| p.positive.as_slice()).collect();
    for pool in [Pool::Mean, Pool::Last] {
        let out = head_outputs(&model, &prompts, pool).unwrap();
        let [n, layers, heads, _] = out.size()[..] else {
            panic!("4-D")
        };
        assert_eq!((n, layers, heads), (2, 30, 9));
        for (i, ids) in prompts.iter().enumerate() {
            for layer in [0usize, 13, 29] {
                let point = HookPoint::new(layer, HookKind::AttnOut);
                let input =
                    Tensor::from_slice(&ids.iter().map(|&t| i64::from(t)).collect::<Vec<_>>())
                        .view([1, -1]);
                let mut hooks = Hooks::new().capture(point);
                model.forward(&input, &mut hooks, false).unwrap();
                let a = hooks.take(point).unwrap().to_kind(Kind::Float).get(0);
                let want = match pool {
                    Pool::Mean => a.mean_dim(0, false, Kind::Float),
                    Pool::Last => a.get(-1),
                };
                let got =
                    out.get(i as i64)
                        .get(layer as i64)
                        .sum_dim_intlist(0, false, Kind::Float);
                let err = (got - &want).abs().max().double_value(&[]);
                let scale = want.abs().max().double_value(&[]);
                assert!(
                    err < 1e-4 * scale.max(1.0),
                    "{pool:?} layer {layer}: {err} of {scale}"
                );
            }
        }
    }
}

#[test]
fn a_task_file_is_read_and_its_bad_lines_named() {
    let (_, tok) = common::model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.jsonl");
    let line = |p: &str, n: &str, a: &str, w: &str| {
        serde_json::json!({"positive": p, "negative": n, "answer": a, "wrong": w}).to_string()
    };
    std::fs::write(
        &path,
        [
            line("The cat sat on the", "The dog sat on the", " mat", " hat"),
            String::new(),
            line("One, two,", "One, six,", " three", " four"),
        ]
        .join("\n"),
    )
    .unwrap();
    let task = read_task_file(&path, &tok).unwrap();
    assert_eq!((task.name.as_str(), task.prompts.len()), ("mine", 2));
    assert_eq!(task.prompts[0].answer, tok.encode(" mat").unwrap()[0]);
    for (bad, says) in [
        (line("a b", "a b c", " x", " y"), "line 1: `positive` has"),
        (line("a", "b", " xylophonically", " y"), "line 1: `answer`"),
        ("{\"positive\": \"a\"}".to_owned(), "line 1: missing field"),
    ] {
        std::fs::write(&path, bad).unwrap();
        let e = read_task_file(&path, &tok).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
}

/// Node scores recomputed from the codes table by set arithmetic: for each trial and head,
/// the codes seen on positives and on no corruption.
fn node_scores_from_codes(codes: &[CodeRow], seed: u32, heads: &[HeadRow]) -> Vec<f64> {
    heads
        .iter()
        .map(|h| {
            let set = |corrupted: bool| -> HashSet<Vec<u32>> {
                codes
                    .iter()
                    .filter(|c| c.seed == seed && c.layer == h.layer && c.head == h.head)
                    .filter(|c| c.corrupted == corrupted)
                    .flat_map(|c| {
                        // A silent head's empty list is one code of its own.
                        if c.codes.is_empty() {
                            vec![vec![]]
                        } else {
                            c.codes.iter().map(|&x| vec![x]).collect()
                        }
                    })
                    .collect()
            };
            set(false).difference(&set(true)).count() as f64
        })
        .collect()
}

/// A whole run on the bundled model (induction, patching as the ground truth): the heads
/// table's scores, the summary's AUCs and Spearman's ρ all follow from the codes table and
/// the ablation effects it writes, recomputed here without the library's scoring.
#[test]
fn a_circuit_run_agrees_with_its_own_codes_and_effects() {
    let model = TextModel::open(&common::model_path(), tch::Device::Cpu, Compute::F32).unwrap();
    let task = by_name("induction", &model.tokenizer, 4, 0).unwrap();
    let spec = CircuitSpec {
        config: DiscoverConfig {
            seeds: 2,
            sae_prompts: 4,
            sae: L1Config {
                epochs: 30,
                ..DiscoverConfig::default().sae
            },
            ..DiscoverConfig::default()
        },
        ground_truth: GroundTruth::Ablation(Ablation::Corrupted),
        ..CircuitSpec::default()
    };
    let mut stages = Vec::new();
    let r = run(&model, "bundled", &task, &spec, &mut |s| stages.push(s)).unwrap();
    assert_eq!(r.heads.len(), 270);
    assert_eq!(
        r.codes.len(),
        2 * 2 * 4 * 270,
        "trials × sides × prompts × heads"
    );
    assert!(matches!(
        stages.last(),
        Some(Stage::Sweep {
            done: 270,
            of: 270,
            ..
        })
    ));
    let s = &r.summary;
    assert_eq!((s.layers, s.heads_per_layer, s.prompts), (30, 9, 4));
    assert!(s.accuracy >= 0.75, "{s:?}");
    assert_eq!(s.ground_truth, "patching");
    let per_seed: Vec<Vec<f64>> = (0..2)
        .map(|k| node_scores_from_codes(&r.codes, k, &r.heads))
        .collect();
    for (i, h) in r.heads.iter().enumerate() {
        let mean = (per_seed[0][i] + per_seed[1][i]) / 2.0;
        assert!(
            (h.code_score - mean).abs() < 1e-12,
            "L{}H{}",
            h.layer,
            h.head
        );
        let higher = r
            .heads
            .iter()
            .filter(|o| o.code_score > h.code_score)
            .count();
        assert_eq!(h.rank as usize, higher + 1);
    }
    let effects: Vec<f64> = r.heads.iter().map(|h| h.ablation_effect.unwrap()).collect();
    for (a, share) in s.agreement.iter().zip(&spec.cutoffs) {
        let cutoff = share * s.logit_diff.abs();
        let truth: Vec<bool> = effects.iter().map(|e| e.abs() > cutoff).collect();
        assert_eq!(a.heads, truth.iter().filter(|&&t| t).count());
        let node = a.node_auc.as_ref().expect("both classes present");
        for (k, scores) in per_seed.iter().enumerate() {
            let want = auc(&truth, scores).unwrap();
            assert!(
                (node.values[k] - want).abs() < 1e-12,
                "{}: seed {k}",
                a.circuit
            );
        }
    }
    let flags: Vec<bool> = r.heads.iter().map(|h| h.in_circuit).collect();
    let first = spec.cutoffs[0] * s.logit_diff.abs();
    assert_eq!(
        flags,
        effects.iter().map(|e| e.abs() > first).collect::<Vec<_>>()
    );
    let size: Vec<f64> = effects.iter().map(|e| e.abs()).collect();
    let rho = s.spearman.as_ref().unwrap();
    assert!((rho.values[0] - spearman(&per_seed[0], &size).unwrap()).abs() < 1e-12);
    // The mean logit difference moves by the patching effects; the largest is not noise.
    assert!(size.iter().cloned().fold(0.0, f64::max) > 0.1);
    assert!(s.runtimes.ablation_sweep.unwrap() > 0.0 && s.runtimes.speedup.unwrap() > 0.0);
}

#[test]
fn head_lists_name_the_line_of_a_bad_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heads.txt");
    std::fs::write(&path, "# a circuit\n9.9 name-mover\n\n10.0\n").unwrap();
    assert_eq!(
        read_head_list(&path, 12, 12).unwrap(),
        vec![(9, 9), (10, 0)]
    );
    for (text, want) in [
        (
            "1.1\n12.0\n",
            "line 2: head 12.0 is outside the model's 12 layers of 12 heads",
        ),
        ("1.1\nnine\n", "line 2: `nine` is not LAYER.HEAD"),
        ("# nothing\n", "no heads"),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = read_head_list(&path, 12, 12).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("heads.txt"), "{e}");
    }
}
