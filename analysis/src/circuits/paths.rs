//! Path patching (Wang et al., "Interpretability in the Wild"): how much of a head's effect on
//! a task goes along one path, for a handful of candidate heads. Ablating a head measures
//! everything downstream of it; a circuit is made of edges, and path patching measures them.
//!
//! - **A head's own path to the logits.** The head takes its output from the prompt's
//!   corruption while every other head keeps its clean output (MLPs and norms recompute, as in
//!   the IOI paper), so the change reaches the logits only through the head's own write and the
//!   MLPs after it.
//! - **An edge, sender → receiver.** In that same frozen pass the receiver's output is
//!   recomputed from the residual stream it reads, which differs from the clean one only by the
//!   sender's write and the MLPs' response to it: what the receiver would do if the sender alone had seen the corruption.
//!   That output is patched into a clean pass with nothing else changed, and the change in the
//!   logit difference is the edge's effect (through the receiver's queries, keys and values
//!   together).
//!
//! One frozen pass per sender gives every receiver's input at once, so a group of prompts costs
//! three passes (the clean answers and the clean and corrupted outputs), one per candidate and
//! one per pair.

use super::ablate::{BATCH, captured_z, logit_diffs, replace_head};
use super::task::{Task, TaskPrompt};
use crate::error::{AnalysisError, Result};
use saescope_activations::hooks::{HookKind, HookPoint, Hooks, Intervention};
use saescope_activations::model::Model;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;
use tch::Tensor;

/// A head as (layer, head).
pub type Head = (usize, usize);

/// What path patching found for the candidates.
#[derive(Clone, Debug, PartialEq)]
pub struct PathEffects {
    /// The candidates, as given.
    pub candidates: Vec<Head>,
    /// Each candidate's effect on the mean logit difference along its own path to the logits.
    pub direct: Vec<f64>,
    /// Each pair of candidates in different layers, the earlier first, with its edge's effect.
    pub pairs: Vec<(Head, Head, f64)>,
    /// Seconds it took.
    pub seconds: f64,
}

/// The candidate pairs (index of sender, index of receiver), the sender in an earlier layer.
fn pairs_of(candidates: &[Head]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (s, a) in candidates.iter().enumerate() {
        for (r, b) in candidates.iter().enumerate() {
            if a.0 < b.0 {
                out.push((s, r));
            }
        }
    }
    out
}

/// Hooks that set every head of layers `sender.0` onwards to its clean output (`clean` holds
/// [batch, pos, heads, d_head] for each layer from `first` on), except the sender, which takes
/// its corrupted one. What each later layer computed before being frozen goes into `seen`.
fn frozen(
    sender: Head,
    (first, clean): (usize, &[Tensor]),
    corrupted: &Tensor,
    seen: &Rc<RefCell<BTreeMap<usize, Tensor>>>,
) -> Hooks {
    let (layer, head) = sender;
    let mut hooks = Hooks::new();
    for (l, clean) in (first..).zip(clean).skip(layer - first) {
        let fill = if l == layer {
            let fill = clean.copy();
            fill.narrow(2, head as i64, 1)
                .copy_(&corrupted.narrow(2, head as i64, 1));
            fill
        } else {
            clean.shallow_clone()
        };
        let seen = Rc::clone(seen);
        hooks = hooks.intervene(
            HookPoint::new(l, HookKind::AttnZ),
            Intervention::Map(Box::new(move |z| {
                seen.borrow_mut().insert(l, z.shallow_clone());
                fill.to_kind(z.kind())
            })),
        );
    }
    hooks
}

/// Path-patches `candidates` on `task`'s prompts against their corruptions. `progress` gets
/// (passes done, passes).
pub fn path_patch(
    model: &Model,
    task: &Task,
    candidates: &[Head],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PathEffects> {
    let start = Instant::now();
    let (layers, heads) = (model.n_layers(), model.hook_shape(HookKind::AttnZ)[0]);
    if let Some(h) = candidates.iter().find(|h| h.0 >= layers || h.1 >= heads) {
        return Err(AnalysisError::Config(format!(
            "head {}.{} is outside the model's {layers} layers of {heads} heads",
            h.0, h.1
        )));
    }
    if candidates.is_empty() {
        return Ok(PathEffects {
            candidates: Vec::new(),
            direct: Vec::new(),
            pairs: Vec::new(),
            seconds: 0.0,
        });
    }
    // Clean outputs from the first candidate's layer on, corrupted ones at the candidates'.
    let first = candidates.iter().map(|h| h.0).min().expect("candidates");
    let later: Vec<usize> = (first..layers).collect();
    let mut senders: Vec<usize> = candidates.iter().map(|h| h.0).collect();
    senders.sort_unstable();
    senders.dedup();
    let pairs = pairs_of(candidates);
    let groups: Vec<&[TaskPrompt]> = task.prompts.chunks(BATCH).collect();
    let total = groups.len() * (3 + candidates.len() + pairs.len());
    let mut done = 0;
    let mut direct = vec![0.0; candidates.len()];
    let mut edge = vec![0.0; pairs.len()];
    let mut clean_sum = 0.0;
    for group in groups {
        let pos: Vec<(&[u32], u32, u32)> = group
            .iter()
            .map(|p| (p.positive.as_slice(), p.answer, p.wrong))
            .collect();
        let ids: Vec<&[u32]> = pos.iter().map(|p| p.0).collect();
        let neg: Vec<&[u32]> = group.iter().map(|p| p.negative.as_slice()).collect();
        let sum = |hooks: &mut dyn FnMut() -> Hooks| -> Result<f64> {
            Ok(logit_diffs(model, &pos, hooks)?.iter().sum())
        };
        clean_sum += sum(&mut Hooks::new)?;
        let clean = captured_z(model, &ids, &later)?;
        let corrupted = captured_z(model, &neg, &senders)?;
        done += 3;
        progress(done, total);
        for (c, &sender) in candidates.iter().enumerate() {
            let seen = Rc::new(RefCell::new(BTreeMap::new()));
            let corrupted = &corrupted[senders.binary_search(&sender.0).expect("a sender")];
            direct[c] += sum(&mut || frozen(sender, (first, &clean), corrupted, &seen))?;
            done += 1;
            progress(done, total);
            for (e, &(_, r)) in pairs.iter().enumerate().filter(|(_, p)| p.0 == c) {
                let (layer, head) = candidates[r];
                let fill = seen.borrow()[&layer].narrow(2, head as i64, 1);
                let point = HookPoint::new(layer, HookKind::AttnZ);
                edge[e] += sum(&mut || replace_head(point, head, &fill))?;
                done += 1;
                progress(done, total);
            }
        }
    }
    let n = task.prompts.len().max(1) as f64;
    let clean = clean_sum / n;
    Ok(PathEffects {
        candidates: candidates.to_vec(),
        direct: direct.iter().map(|d| d / n - clean).collect(),
        pairs: pairs
            .iter()
            .zip(&edge)
            .map(|(&(s, r), e)| (candidates[s], candidates[r], e / n - clean))
            .collect(),
        seconds: start.elapsed().as_secs_f64(),
    })
}
