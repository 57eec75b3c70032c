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
use saescope_analysis::circuits::paths::path_patch;
use saescope_analysis::circuits::report::{CircuitSpec, GroundTruth, Stage, read_head_list, run};
use saescope_analysis::circuits::task::{
    Task, TaskPrompt, by_name, greater_than, induction, ioi, read_task_file,
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
    assert!(
        e.contains("no attention heads at layer 99 (its layers are 0 to 29)"),
        "{e}"
    );
}

/// The heads' writes of a layer, pooled, sum to its attention output pooled the same way
/// (Llama's output projection has no bias).
#[test]
fn head_outputs_sum_to_the_attention_output() {
    let (model, tok) = common::model();
    let task = ioi(&tok, 3, 3).unwrap();
    let prompts: Vec<&[u32]> = task.prompts.iter().map(|p| p.positive.as_slice()).collect();
    // Prompts of different lengths, so the batch is padded and the pooling must leave it out.
    let lengths: HashSet<usize> = prompts.iter().map(|p| p.len()).collect();
    assert!(lengths.len() > 1, "{lengths:?}");
    for pool in [Pool::Mean, Pool::Last] {
        // Only the layers asked for, in their order.
        let layers = [0usize, 13, 29];
        let out = head_outputs(&model, &prompts, pool, &layers).unwrap();
        let [n, scored, heads, _] = out.size()[..] else {
            panic!("4-D")
        };
        assert_eq!((n, scored, heads), (3, 3, 9));
        for (i, ids) in prompts.iter().enumerate() {
            for (at, &layer) in layers.iter().enumerate() {
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
                let got = out
                    .get(i as i64)
                    .get(at as i64)
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

/// A pair's score recomputed from the codes table: the (code of a, code of b) pairs seen on
/// one prompt together, on positives and on no corruption.
fn pair_score_from_codes(codes: &[CodeRow], seed: u32, a: (u32, u32), b: (u32, u32)) -> f64 {
    let of = |corrupted: bool, head: (u32, u32)| -> Vec<Vec<u32>> {
        let mut rows: Vec<&CodeRow> = codes
            .iter()
            .filter(|c| c.seed == seed && c.corrupted == corrupted && (c.layer, c.head) == head)
            .collect();
        rows.sort_by_key(|c| c.prompt);
        // A silent head's empty list is one code of its own.
        rows.iter()
            .map(|c| {
                if c.codes.is_empty() {
                    vec![u32::MAX]
                } else {
                    c.codes.clone()
                }
            })
            .collect()
    };
    let set = |corrupted: bool| -> HashSet<(u32, u32)> {
        let (ca, cb) = (of(corrupted, a), of(corrupted, b));
        ca.iter()
            .zip(&cb)
            .flat_map(|(x, y)| x.iter().flat_map(|&i| y.iter().map(move |&j| (i, j))))
            .collect()
    };
    set(false).difference(&set(true)).count() as f64
}

/// A whole run on the bundled model (induction, patching as the ground truth, four layers
/// asked for out of order and one twice): the heads table's scores, the summary's AUCs and
/// Spearman's ρ, and the pairs' agreement with path patching all follow from the codes table
/// and the effects it writes, recomputed here without the library's scoring.
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
        layers: Some(vec![29, 1, 3, 1, 2]),
        path_candidates: 6,
        ..CircuitSpec::default()
    };
    let mut stages = Vec::new();
    let r = run(&model, "bundled", &task, &spec, &mut |s| stages.push(s)).unwrap();
    let layers = [1u32, 2, 3, 29];
    assert_eq!(r.heads.len(), 36);
    assert!(r.heads.iter().all(|h| layers.contains(&h.layer)));
    assert_eq!(
        r.codes.len(),
        2 * 2 * 4 * 36,
        "trials × sides × prompts × heads"
    );
    assert!(stages.contains(&Stage::Sweep {
        how: Ablation::Corrupted,
        done: 36,
        of: 36,
    }));
    // One group of prompts: 3 passes (clean answers, clean and corrupted outputs), one per
    // candidate and one per pair.
    let s = &r.summary;
    let paths = s.path_patching.as_ref().expect("path patching ran");
    let passes = 3 + 6 + paths.pairs;
    assert_eq!(
        stages.last(),
        Some(&Stage::Paths {
            done: passes,
            of: passes
        })
    );
    assert_eq!((s.layers, s.heads_per_layer, s.prompts), (30, 9, 4));
    assert_eq!(s.scored_layers.as_deref(), Some(&[1usize, 2, 3, 29][..]));
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

    // Path patching: the six heads of largest |patching effect|, each with its own path's
    // effect, and every pair of them in different layers in the edges table.
    let mut by_size: Vec<&HeadRow> = r.heads.iter().collect();
    by_size.sort_by(|a, b| {
        b.ablation_effect
            .unwrap()
            .abs()
            .total_cmp(&a.ablation_effect.unwrap().abs())
    });
    let chosen: Vec<(u32, u32)> = by_size.iter().take(6).map(|h| (h.layer, h.head)).collect();
    assert_eq!(paths.candidates, chosen);
    assert_eq!(paths.chosen_by, "|patching effect|");
    for h in &r.heads {
        assert_eq!(
            h.direct_effect.is_some(),
            chosen.contains(&(h.layer, h.head)),
            "L{}H{}",
            h.layer,
            h.head
        );
    }
    // The effects in the tables are path patching's own, on the right heads and pairs.
    let chosen_heads: Vec<(usize, usize)> = chosen
        .iter()
        .map(|&(l, h)| (l as usize, h as usize))
        .collect();
    let direct = path_patch(&model.model, &task, &chosen_heads, &mut |_, _| {}).unwrap();
    for (&(l, h), want) in chosen_heads.iter().zip(&direct.direct) {
        let row = r
            .heads
            .iter()
            .find(|r| (r.layer, r.head) == (l as u32, h as u32));
        let got = row.unwrap().direct_effect.unwrap();
        assert!((got - want).abs() < 1e-9, "L{l}H{h}: {got} vs {want}");
    }
    let patched: Vec<_> = r.edges.iter().filter(|e| e.path_effect.is_some()).collect();
    for &(a, b, want) in &direct.pairs {
        let key = (a.0 as u32, a.1 as u32, b.0 as u32, b.1 as u32);
        let row = patched
            .iter()
            .find(|e| (e.from_layer, e.from_head, e.to_layer, e.to_head) == key)
            .unwrap_or_else(|| panic!("pair {a:?} -> {b:?} is in the table"));
        assert!(
            (row.path_effect.unwrap() - want).abs() < 1e-9,
            "{a:?} -> {b:?}"
        );
    }
    let want_pairs = chosen
        .iter()
        .flat_map(|a| chosen.iter().map(move |b| (a, b)))
        .filter(|(a, b)| a.0 < b.0)
        .count();
    assert_eq!((paths.pairs, patched.len()), (want_pairs, want_pairs));
    assert!(patched.iter().all(|e| e.from_layer < e.to_layer));
    let pair_scores: Vec<Vec<f64>> = (0..2u32)
        .map(|k| {
            patched
                .iter()
                .map(|e| {
                    let (a, b) = ((e.from_layer, e.from_head), (e.to_layer, e.to_head));
                    pair_score_from_codes(&r.codes, k, a, b)
                })
                .collect()
        })
        .collect();
    for (e, row) in patched.iter().enumerate() {
        let mean = (pair_scores[0][e] + pair_scores[1][e]) / 2.0;
        assert!((row.score - mean).abs() < 1e-12);
    }
    for (a, share) in paths.agreement.iter().zip(&spec.cutoffs) {
        let cutoff = share * s.logit_diff.abs();
        let truth: Vec<bool> = patched
            .iter()
            .map(|e| e.path_effect.unwrap().abs() > cutoff)
            .collect();
        assert_eq!(a.edges, truth.iter().filter(|&&t| t).count());
        for (k, scores) in pair_scores.iter().enumerate() {
            match (&a.edge_auc, auc(&truth, scores)) {
                (Some(got), Some(want)) => assert!((got.values[k] - want).abs() < 1e-12),
                (None, None) => {}
                (got, want) => panic!("{got:?} vs {want:?}"),
            }
        }
    }
}

/// Path patching against passes made by hand, one prompt at a time without padding, on heads
/// whose patching moves IOI's logit difference most in their layers: the own path of a head in
/// the last layer is its whole patching effect (no head comes after it); an earlier head's is
/// the effect with it patched and every later layer's heads held at their clean outputs; an
/// edge between adjacent layers is the receiver's output from a pass with the sender patched,
/// put into a clean pass.
#[test]
fn path_patching_equals_patching_by_hand() {
    let (model, tok) = common::model();
    let task = ioi(&tok, 3, 2).unwrap();
    let candidates = [(29usize, 1usize), (28, 1), (23, 3), (24, 4)];
    let got = path_patch(&model, &task, &candidates, &mut |_, _| {}).unwrap();
    let pairs: Vec<_> = got.pairs.iter().map(|p| (p.0, p.1)).collect();
    assert_eq!(
        pairs,
        [
            ((28, 1), (29, 1)),
            ((23, 3), (29, 1)),
            ((23, 3), (28, 1)),
            ((23, 3), (24, 4)),
            ((24, 4), (29, 1)),
            ((24, 4), (28, 1))
        ]
    );
    let point = |l: usize| HookPoint::new(l, HookKind::AttnZ);
    let input = |ids: &[u32]| {
        Tensor::from_slice(&ids.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()).view([1, -1])
    };
    // `layer`'s z in a pass over `ids` with `hooks`.
    let z_with = |ids: &[u32], layer: usize, hooks: Hooks| {
        let mut h = hooks.capture(point(layer));
        model.forward(&input(ids), &mut h, false).unwrap();
        h.take(point(layer)).unwrap()
    };
    let z = |ids: &[u32], layer: usize| z_with(ids, layer, Hooks::new());
    let with_head = |z: &Tensor, head: usize, from: &Tensor| {
        let z = z.copy();
        z.narrow(2, head as i64, 1)
            .copy_(&from.narrow(2, head as i64, 1));
        z
    };
    let effect = |hooks: &dyn Fn(&TaskPrompt) -> Hooks| {
        let mut total = 0.0;
        for p in &task.prompts {
            let one = [(p.positive.as_slice(), p.answer, p.wrong)];
            let patched = logit_diffs(&model, &one, &mut || hooks(p)).unwrap()[0];
            total += patched - logit_diffs(&model, &one, &mut Hooks::new).unwrap()[0];
        }
        total / task.prompts.len() as f64
    };
    // The sender's layer with its head taken from the corruption.
    let patched = |p: &TaskPrompt, (l, h): (usize, usize)| {
        with_head(&z(&p.positive, l), h, &z(&p.negative, l))
    };
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 2e-4, "{what}: {a} vs {b}");
    let last =
        effect(&|p| Hooks::new().intervene(point(29), Intervention::Replace(patched(p, (29, 1)))));
    close(got.direct[0], last, "L29H1's own path");
    let swept = ablation_sweep(
        &model,
        &task,
        Ablation::Corrupted,
        Some(&[23, 29]),
        &mut |_, _| {},
    )
    .unwrap();
    close(
        got.direct[0],
        swept[9 + 1].effect,
        "L29H1's patching effect",
    );
    assert!(last.abs() > 1.0, "L29H1 matters: {last}");
    for (at, sender) in [(1, (28, 1)), (2, (23, 3))] {
        let held = effect(&|p| {
            let sent =
                Hooks::new().intervene(point(sender.0), Intervention::Replace(patched(p, sender)));
            (sender.0 + 1..30).fold(sent, |h, l| {
                h.intervene(point(l), Intervention::Replace(z(&p.positive, l)))
            })
        });
        close(got.direct[at], held, &format!("{sender:?}'s own path"));
    }
    for (at, sender, receiver) in [(0, (28, 1), (29, 1)), (3, (23, 3), (24, 4))] {
        let edge = effect(&|p| {
            let sent =
                Hooks::new().intervene(point(sender.0), Intervention::Replace(patched(p, sender)));
            let seen = z_with(&p.positive, receiver.0, sent);
            let fill = with_head(&z(&p.positive, receiver.0), receiver.1, &seen);
            Hooks::new().intervene(point(receiver.0), Intervention::Replace(fill))
        });
        close(
            got.pairs[at].2,
            edge,
            &format!("{sender:?} -> {receiver:?}"),
        );
    }
    // Holding the later heads matters: L23H3's own path is not its whole patching effect
    // (later heads, L24H4 among them, undo part of what it does).
    assert!(
        (got.direct[2] - swept[3].effect).abs() > 0.5,
        "{got:?} {swept:?}"
    );
    let e = path_patch(&model, &task, &[(30, 0)], &mut |_, _| {}).unwrap_err();
    assert!(
        e.to_string()
            .contains("head 30.0 is outside the model's 30 layers of 9 heads"),
        "{e}"
    );
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
