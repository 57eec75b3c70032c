//! Circuit tasks on the bundled model: it does IOI and induction (and not their corruptions),
//! and a head's zero-ablation equals taking its write out of the attention output by hand.

use saescope_activations::hooks::{HookKind, HookPoint, Hooks, Intervention};
use saescope_analysis::circuits::ablate::{
    Ablation, Pool, ablation_sweep, head_outputs, logit_diffs, task_score,
};
use saescope_analysis::circuits::task::{Task, greater_than, induction, ioi, read_task_file};
use tch::{Kind, Tensor};

mod common;

#[test]
fn the_bundled_model_does_ioi_greater_than_and_induction_and_not_their_corruptions() {
    let (model, tok) = common::model();
    let tasks: [Task; 3] = [
        ioi(&tok, 24, 0).unwrap(),
        greater_than(&tok, 24, 0).unwrap(),
        induction(&tok, 24, 12, (1_000, 20_000), 0).unwrap(),
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
    for how in [Ablation::Zero, Ablation::Mean] {
        let effects = ablation_sweep(&model, &task, how, Some(&layers), &mut |_, _| {}).unwrap();
        assert_eq!(effects.len(), layers.len() * heads);
        for (layer, head) in [(0usize, 0usize), (5, 3), (20, heads - 1)] {
            let w_o = model
                .to_residual(HookPoint::new(layer, HookKind::AttnZ))
                .unwrap()
                .to_kind(Kind::Float)
                .narrow(1, (head * d_head) as i64, d_head as i64);
            let fill = match how {
                Ablation::Zero => Tensor::zeros([d_head as i64], (Kind::Float, tch::Device::Cpu)),
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
            for (ids, answer, wrong) in &clean {
                let (input, z) = capture(layer, ids);
                let write = (z.select(2, head as i64) - &fill).matmul(&w_o.transpose(0, 1));
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
