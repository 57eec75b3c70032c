//! How well the model does a task, and which heads it needs for it: the logit difference at
//! the last position (answer less wrong answer) over a task's prompts, and its change when one
//! head's output (`attn.hook_z` at that head) is replaced, head by head: by its mean over all
//! the task's prompts and positions, by zero, or by its output on the prompt's own corruption
//! (patching). Heads whose ablation moves the metric most are the ground truth that circuit
//! discovery is checked against. Also each head's write into the residual stream, pooled over
//! a prompt's positions, which the code-overlap method reads.

use super::task::{Task, TaskPrompt};
use crate::error::{AnalysisError, Result};
use saescope_activations::hooks::{HookKind, HookPoint, Hooks, Intervention};
use saescope_activations::model::Model;
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
    /// Its output on the prompt's own corruption (activation patching, as ACDC corrupts): only
    /// what the head does differently because of what the corruption removed is taken away.
    Corrupted,
}

impl Ablation {
    /// `mean`, `zero` or `corrupted`.
    pub fn name(self) -> &'static str {
        match self {
            Ablation::Mean => "mean",
            Ablation::Zero => "zero",
            Ablation::Corrupted => "corrupted",
        }
    }
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

/// The logit difference of each prompt under `hooks`, the prompts run in batches of up to
/// [`BATCH`], padded on the right: attention is causal, so what follows a prompt's last token
/// cannot change its logits, and nothing but the hooks does.
pub fn logit_diffs(
    model: &Model,
    prompts: &[(&[u32], u32, u32)],
    hooks: &mut dyn FnMut() -> Hooks,
) -> Result<Vec<f64>> {
    Ok(answers(model, prompts, hooks)?
        .into_iter()
        .map(|(d, _)| d)
        .collect())
}

/// Prompts per forward pass in the ablation sweep and the task's scores.
pub const BATCH: usize = 32;

/// `prompts` as one [n, longest] batch, padded on the right with token 0.
fn padded(model: &Model, prompts: &[&[u32]]) -> Tensor {
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let flat: Vec<i64> = prompts
        .iter()
        .flat_map(|p| {
            p.iter()
                .map(|&t| i64::from(t))
                .chain(std::iter::repeat_n(0, longest - p.len()))
        })
        .collect();
    Tensor::from_slice(&flat)
        .view([prompts.len() as i64, longest as i64])
        .to_device(model.device())
}

/// Each prompt's logit difference under `hooks` (made once per batch of up to [`BATCH`]
/// prompts, in order), with the model's most likely next token.
pub fn answers(
    model: &Model,
    prompts: &[(&[u32], u32, u32)],
    hooks: &mut dyn FnMut() -> Hooks,
) -> Result<Vec<(f64, u32)>> {
    if let Some((i, p)) = prompts
        .iter()
        .enumerate()
        .find(|(_, p)| p.0.is_empty() || p.0.len() > model.ctx_len())
    {
        return Err(AnalysisError::Config(format!(
            "prompt {i} has {} tokens (the model reads 1 to {})",
            p.0.len(),
            model.ctx_len()
        )));
    }
    let mut out = Vec::with_capacity(prompts.len());
    let final_resid = HookPoint::new(model.n_layers() - 1, HookKind::ResidPost);
    for batch in prompts.chunks(BATCH) {
        let ids: Vec<&[u32]> = batch.iter().map(|p| p.0).collect();
        let mut h = hooks();
        // Only each prompt's last position is read: after the last block only the final norm
        // and the unembedding remain, both position by position, so the residual stream can
        // be cut to those positions there and the vocabulary-wide product made for one
        // position a prompt instead of all of them.
        let cut = !h.points().any(|p| p == final_resid);
        if cut {
            let last: Vec<i64> = ids.iter().map(|p| p.len() as i64 - 1).collect();
            let index = Tensor::from_slice(&last)
                .view([-1, 1, 1])
                .to_device(model.device());
            h = h.intervene(
                final_resid,
                Intervention::Map(Box::new(move |x| {
                    x.gather(1, &index.expand([-1, 1, x.size()[2]], false), false)
                })),
            );
        }
        let logits = model
            .forward(&padded(model, &ids), &mut h, true)?
            .expect("logits were asked for");
        for (row, &(ids, answer, wrong)) in batch.iter().enumerate() {
            let at_pos = if cut { 0 } else { ids.len() as i64 - 1 };
            let last = logits
                .get(row as i64)
                .get(at_pos)
                .to_kind(Kind::Double)
                .to_device(tch::Device::Cpu);
            let at = |t: u32| last.double_value(&[i64::from(t)]);
            let top = last.argmax(0, false).int64_value(&[]) as u32;
            out.push((at(answer) - at(wrong), top));
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
    saescope_stats::metrics::mean(xs.iter().copied()).unwrap_or(0.0)
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// The mean over positions (the code-overlap method's default).
    Mean,
    /// The last position's, where the answer is read.
    Last,
}

/// The layers whose heads are scored: `asked` sorted without repeats, or every layer when
/// `None`. A layer the model does not have is refused, naming it and the model's depth.
pub fn scored_layers(model: &Model, asked: Option<&[usize]>) -> Result<Vec<usize>> {
    let n = model.n_layers();
    let Some(asked) = asked else {
        return Ok((0..n).collect());
    };
    if asked.is_empty() {
        return Err(AnalysisError::Config("layers: none given".into()));
    }
    if let Some(l) = asked.iter().find(|&&l| l >= n) {
        return Err(AnalysisError::Config(format!(
            "layers: the model has no attention heads at layer {l} (its layers are 0 to {})",
            n - 1
        )));
    }
    let mut layers = asked.to_vec();
    layers.sort_unstable();
    layers.dedup();
    Ok(layers)
}

/// Each head's write into the residual stream, z_h · W_O[h]ᵀ, pooled over the positions of
/// each prompt: [prompts, layers, heads, d_model] for each of `layers` (sorted, as
/// [`scored_layers`] gives them). The heads' writes of a layer sum to its attention output
/// less the projection's bias.
pub fn head_outputs(
    model: &Model,
    prompts: &[&[u32]],
    pool: Pool,
    layers: &[usize],
) -> Result<Tensor> {
    let [heads, d_head] = model.hook_shape(HookKind::AttnZ)[..] else {
        return Err(AnalysisError::Config(
            "the model's attn.hook_z is not heads x d_head".into(),
        ));
    };
    let points: Vec<HookPoint> = layers
        .iter()
        .map(|&l| HookPoint::new(l, HookKind::AttnZ))
        .collect();
    // Each layer's W_O as one [d_head, d_model] block per head, for every batch.
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
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(AnalysisError::Config(format!("prompt {i} has no tokens")));
    }
    if layers.is_empty() {
        return Err(AnalysisError::Config("layers: none given".into()));
    }
    let device = model.device();
    let mut rows = Vec::with_capacity(prompts.len().div_ceil(BATCH));
    // Batches padded on the right: attention is causal, so a prompt's positions see nothing
    // of the padding, which the pooling then leaves out.
    for batch in prompts.chunks(BATCH) {
        let lens = Tensor::from_slice(&batch.iter().map(|p| p.len() as i64).collect::<Vec<_>>())
            .to_device(device);
        let zs = captured_z(model, batch, layers)?;
        let [n, positions, ..] = zs[0].size()[..] else {
            unreachable!("z is [batch, positions, heads, d_head]")
        };
        let mask = Tensor::arange(positions, (Kind::Int64, device))
            .unsqueeze(0)
            .lt_tensor(&lens.unsqueeze(1))
            .to_kind(Kind::Float)
            .view([n, positions, 1, 1]);
        let last = (&lens - 1)
            .view([n, 1, 1, 1])
            .expand([n, 1, heads as i64, d_head as i64], false);
        let per_layer: Vec<Tensor> = zs
            .iter()
            .zip(&w_o)
            .map(|(z, w_o)| {
                let pooled = match pool {
                    Pool::Mean => {
                        (z * &mask).sum_dim_intlist(1, false, Kind::Float)
                            / lens.to_kind(Kind::Float).view([n, 1, 1])
                    }
                    Pool::Last => z.gather(1, &last, false).squeeze_dim(1),
                };
                // Per head, [batch, d_head] · W_O[:, h-slice]ᵀ: [batch, heads, d_model].
                pooled.transpose(0, 1).bmm(w_o).transpose(0, 1)
            })
            .collect();
        rows.push(Tensor::stack(&per_layer, 1));
    }
    Ok(Tensor::cat(&rows, 0))
}

/// Each layer's `attn.hook_z` on `prompts` in one pass, padded on the right as
/// [`answers`] pads them: [prompts, positions, heads, d_head] per layer of `layers`.
pub(crate) fn captured_z(
    model: &Model,
    prompts: &[&[u32]],
    layers: &[usize],
) -> Result<Vec<Tensor>> {
    let ids = padded(model, prompts);
    let points: Vec<HookPoint> = layers
        .iter()
        .map(|&l| HookPoint::new(l, HookKind::AttnZ))
        .collect();
    let mut hooks = points.iter().fold(Hooks::new(), |h, &p| h.capture(p));
    model.forward(&ids, &mut hooks, false)?;
    Ok(points
        .iter()
        .map(|&p| hooks.take(p).expect("captured").to_kind(Kind::Float))
        .collect())
}

/// Hooks that set head `head` of `point` to `fill` (broadcast to [batch, pos, 1, d_head]).
pub(crate) fn replace_head(point: HookPoint, head: usize, fill: &Tensor) -> Hooks {
    let fill = fill.shallow_clone();
    Hooks::new().intervene(
        point,
        Intervention::Map(Box::new(move |z| {
            // z [batch, pos, heads, d_head]: head `head` takes the fill.
            let z = z.copy();
            let mut slot = z.narrow(2, head as i64, 1);
            slot.copy_(&fill.to_kind(z.kind()).expand_as(&slot));
            z
        })),
    )
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
    let (heads, d_head) = (shape[0], shape[1] as i64);
    let layers = &scored_layers(model, layers)?;
    let prompts = positives(task);
    let clean = mean(&logit_diffs(model, &prompts, &mut Hooks::new)?);
    // The batches `answers` makes, so a corruption's z lines up with its prompt.
    let groups: Vec<Vec<usize>> = (0..prompts.len())
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[usize]>::to_vec)
        .collect();
    let means = match how {
        Ablation::Mean => mean_z(model, task, layers)?,
        _ => Vec::new(),
    };
    let corrupted: Vec<Vec<Tensor>> = match how {
        Ablation::Corrupted => groups
            .iter()
            .map(|g| {
                let negatives: Vec<&[u32]> = g
                    .iter()
                    .map(|&i| task.prompts[i].negative.as_slice())
                    .collect();
                captured_z(model, &negatives, layers)
            })
            .collect::<Result<_>>()?,
        _ => Vec::new(),
    };
    let groups: Vec<Vec<(&[u32], u32, u32)>> = groups
        .iter()
        .map(|g| g.iter().map(|&i| prompts[i]).collect())
        .collect();
    let mut out = Vec::with_capacity(layers.len() * heads);
    for (i, &layer) in layers.iter().enumerate() {
        let point = HookPoint::new(layer, HookKind::AttnZ);
        for head in 0..heads {
            let mut total = 0.0;
            for (g, group) in groups.iter().enumerate() {
                let fill = match how {
                    Ablation::Mean => means[i].get(head as i64).view([1, 1, 1, -1]),
                    Ablation::Zero => {
                        Tensor::zeros([1, 1, 1, d_head], (Kind::Float, model.device()))
                    }
                    Ablation::Corrupted => corrupted[g][i].narrow(2, head as i64, 1),
                };
                let diffs = logit_diffs(model, group, &mut || replace_head(point, head, &fill))?;
                total += diffs.iter().sum::<f64>();
            }
            out.push(HeadEffect {
                layer,
                head,
                effect: total / prompts.len() as f64 - clean,
            });
            progress(out.len(), layers.len() * heads);
        }
    }
    Ok(out)
}
