//! How well the model does a task, and which heads it needs for it: the logit difference at
//! the last position (answer less wrong answer) over a task's prompts, and its change when one
//! head's output (`attn.hook_z` at that head) is replaced by its mean over all the task's
//! prompts and positions, or by zero, head by head. Heads whose ablation moves the metric most
//! are the ground truth that circuit discovery is checked against.

use super::task::{Task, TaskPrompt};
use crate::error::{AnalysisError, Result};
use saescope_activations::hooks::{HookKind, HookPoint, Hooks, Intervention};
use saescope_activations::model::Model;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// How the model does on a task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskScore {
    /// Share of prompts whose answer's logit is above the wrong answer's.
    pub accuracy: f64,
    /// Mean logit difference on the prompts.
    pub logit_diff: f64,
    /// Mean logit difference on their corruptions.
    pub corrupted_logit_diff: f64,
}

/// What a head is replaced by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ablation {
    /// Its mean over the task's prompts and their corruptions, every position.
    Mean,
    /// Zero.
    Zero,
}

/// One head's ablation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadEffect {
    /// Its layer.
    pub layer: usize,
    /// Its index in the layer.
    pub head: usize,
    /// Mean logit difference with the head ablated less without, over the prompts.
    pub effect: f64,
}

/// The logit difference of each prompt under `hooks`, the prompts run in batches of equal
/// length (no padding, so nothing but the hooks changes a prompt's logits).
pub fn logit_diffs(
    model: &Model,
    prompts: &[(&[u32], u32, u32)],
    hooks: &mut dyn FnMut() -> Hooks,
) -> Result<Vec<f64>> {
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_len.entry(p.0.len()).or_default().push(i);
    }
    let mut out = vec![0.0; prompts.len()];
    for (len, members) in by_len {
        if len == 0 || len > model.ctx_len() {
            return Err(AnalysisError::Config(format!(
                "a prompt of {len} tokens (the model reads 1 to {})",
                model.ctx_len()
            )));
        }
        let flat: Vec<i64> = members
            .iter()
            .flat_map(|&i| prompts[i].0.iter().map(|&t| i64::from(t)))
            .collect();
        let ids = Tensor::from_slice(&flat)
            .view([members.len() as i64, len as i64])
            .to_device(model.device());
        let logits = model
            .forward(&ids, &mut hooks(), true)?
            .expect("logits were asked for")
            .select(1, len as i64 - 1)
            .to_kind(Kind::Double)
            .to_device(tch::Device::Cpu);
        for (row, &i) in members.iter().enumerate() {
            let (_, answer, wrong) = prompts[i];
            let at = |t: u32| logits.double_value(&[row as i64, i64::from(t)]);
            out[i] = at(answer) - at(wrong);
        }
    }
    Ok(out)
}

fn positives(task: &Task) -> Vec<(&[u32], u32, u32)> {
    task.prompts
        .iter()
        .map(|p: &TaskPrompt| (p.positive.as_slice(), p.answer, p.wrong))
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// How the model does on `task`, clean.
pub fn task_score(model: &Model, task: &Task) -> Result<TaskScore> {
    let clean = logit_diffs(model, &positives(task), &mut Hooks::new)?;
    let corrupted: Vec<(&[u32], u32, u32)> = task
        .prompts
        .iter()
        .map(|p| (p.negative.as_slice(), p.answer, p.wrong))
        .collect();
    let corrupted = logit_diffs(model, &corrupted, &mut Hooks::new)?;
    Ok(TaskScore {
        accuracy: clean.iter().filter(|&&d| d > 0.0).count() as f64 / clean.len().max(1) as f64,
        logit_diff: mean(&clean),
        corrupted_logit_diff: mean(&corrupted),
    })
}

/// The mean of each head's output at each of `layers` over every prompt and corruption of
/// `task`, every position: one [heads, d_head] per layer, from one pass per prompt.
pub fn mean_z(model: &Model, task: &Task, layers: &[usize]) -> Result<Vec<Tensor>> {
    let points: Vec<HookPoint> = layers
        .iter()
        .map(|&l| HookPoint::new(l, HookKind::AttnZ))
        .collect();
    let mut sums: Vec<Option<Tensor>> = layers.iter().map(|_| None).collect();
    let mut count = 0i64;
    for p in &task.prompts {
        for ids in [&p.positive, &p.negative] {
            let input = Tensor::from_slice(&ids.iter().map(|&t| i64::from(t)).collect::<Vec<_>>())
                .view([1, -1])
                .to_device(model.device());
            let mut hooks = points
                .iter()
                .fold(Hooks::new(), |h, &point| h.capture(point));
            model.forward(&input, &mut hooks, false)?;
            count += ids.len() as i64;
            for (sum, &point) in sums.iter_mut().zip(&points) {
                let z = hooks.take(point).expect("captured").to_kind(Kind::Float);
                let s = z.sum_dim_intlist([0, 1].as_slice(), false, Kind::Float);
                *sum = Some(match sum.take() {
                    None => s,
                    Some(t) => t + s,
                });
            }
        }
    }
    Ok(sums
        .into_iter()
        .map(|s| s.expect("a task has prompts") / count as f64)
        .collect())
}

/// How a head's write is pooled over a prompt's positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// The mean over positions (the code-overlap method's default).
    Mean,
    /// The last position's, where the answer is read.
    Last,
}

/// Each head's write into the residual stream, z_h · W_O[h]ᵀ, pooled over the positions of
/// each prompt: [prompts, layers, heads, d_model]. The heads' writes of a layer sum to its
/// attention output less the projection's bias.
pub fn head_outputs(model: &Model, prompts: &[&[u32]], pool: Pool) -> Result<Tensor> {
    let [heads, d_head] = model.hook_shape(HookKind::AttnZ)[..] else {
        return Err(AnalysisError::Config(
            "the model's attn.hook_z is not heads x d_head".into(),
        ));
    };
    let layers = model.n_layers();
    let points: Vec<HookPoint> = (0..layers)
        .map(|l| HookPoint::new(l, HookKind::AttnZ))
        .collect();
    // Each layer's W_O as one [d_head, d_model] block per head, for every prompt.
    let w_o: Vec<Tensor> = points
        .iter()
        .map(|&point| {
            model
                .to_residual(point)
                .expect("attn.hook_z has an output projection")
                .to_kind(Kind::Float)
                .view([-1, heads as i64, d_head as i64])
                .permute([1, 2, 0])
        })
        .collect();
    let mut rows = Vec::with_capacity(prompts.len());
    for ids in prompts {
        let input = Tensor::from_slice(&ids.iter().map(|&t| i64::from(t)).collect::<Vec<_>>())
            .view([1, -1])
            .to_device(model.device());
        let mut h = points
            .iter()
            .fold(Hooks::new(), |h, &point| h.capture(point));
        model.forward(&input, &mut h, false)?;
        let mut per_layer = Vec::with_capacity(layers);
        for (&point, w_o) in points.iter().zip(&w_o) {
            let z = h.take(point).expect("captured").to_kind(Kind::Float).get(0);
            let z = match pool {
                Pool::Mean => z.mean_dim(0, false, Kind::Float),
                Pool::Last => z.get(-1),
            };
            // [heads, d_head] · W_O[:, h-slice]ᵀ for each head: [heads, d_model].
            per_layer.push(z.unsqueeze(1).bmm(w_o).squeeze_dim(1));
        }
        rows.push(Tensor::stack(&per_layer, 0));
    }
    Ok(Tensor::stack(&rows, 0))
}

/// Each head of each of `layers` (every layer when `None`) ablated in turn: the change in the
/// mean logit difference over the task's prompts. `progress` gets (heads done, heads).
pub fn ablation_sweep(
    model: &Model,
    task: &Task,
    how: Ablation,
    layers: Option<&[usize]>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<HeadEffect>> {
    let shape = model.hook_shape(HookKind::AttnZ);
    let heads = shape[0];
    let all: Vec<usize> = (0..model.n_layers()).collect();
    let layers = layers.unwrap_or(&all);
    if let Some(l) = layers.iter().find(|&&l| l >= model.n_layers()) {
        return Err(AnalysisError::Config(format!(
            "layer {l}: the model has {} layers",
            model.n_layers()
        )));
    }
    let prompts = positives(task);
    let clean = mean(&logit_diffs(model, &prompts, &mut Hooks::new)?);
    let mut out = Vec::with_capacity(layers.len() * heads);
    let means = match how {
        Ablation::Mean => mean_z(model, task, layers)?,
        Ablation::Zero => Vec::new(),
    };
    for (i, &layer) in layers.iter().enumerate() {
        let point = HookPoint::new(layer, HookKind::AttnZ);
        let fill = match how {
            Ablation::Mean => means[i].shallow_clone(),
            Ablation::Zero => Tensor::zeros(
                [heads as i64, shape[1] as i64],
                (Kind::Float, model.device()),
            ),
        };
        for head in 0..heads {
            let value = fill.get(head as i64);
            let mut hooks = || {
                let value = value.shallow_clone();
                Hooks::new().intervene(
                    point,
                    Intervention::Map(Box::new(move |z| {
                        // z [batch, pos, heads, d_head]: head `head` takes the fill everywhere.
                        let z = z.copy();
                        let mut slot = z.narrow(2, head as i64, 1);
                        let fill = value.to_kind(z.kind()).view([1, 1, 1, -1]);
                        slot.copy_(&fill.expand_as(&slot));
                        z
                    })),
                )
            };
            let ablated = mean(&logit_diffs(model, &prompts, &mut hooks)?);
            out.push(HeadEffect {
                layer,
                head,
                effect: ablated - clean,
            });
            progress(out.len(), layers.len() * heads);
        }
    }
    Ok(out)
}
