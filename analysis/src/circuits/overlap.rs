//! Heads ranked by code overlap (O'Neill & Bui): each (prompt, head) becomes a discrete code,
//! the strongest latent of a small dictionary on that head's write (or its few strongest), and
//! a head scores by the codes it shows on prompts the model gets right and never on their
//! corruptions. Pairs of heads score the same way by code pairs seen together on one prompt.
//! Everything here is set arithmetic on codes; the model and the dictionary are in
//! [`super::discover`].

use rayon::prelude::*;
use std::collections::HashSet;
use tch::{Kind, Tensor};

/// The code of a (prompt, head) on which no latent is active. Silence counts as a code like
/// any other: a head silent on prompts and active on their corruptions differs between them as
/// much as one that switches latents.
pub const SILENT: u32 = u32::MAX;

/// Codes of every (prompt, head): the indices of its `k` strongest active latents, strongest
/// first, or [`SILENT`] alone when none is active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codes {
    /// Heads per prompt.
    pub heads: usize,
    /// `codes[prompt * heads + head]`.
    pub codes: Vec<Vec<u32>>,
}

impl Codes {
    /// Codes from latent activations [prompts, heads, latents]: the `k` largest positive ones
    /// (k = 1: the argmax).
    pub fn from_activations(acts: &Tensor, k: usize) -> Codes {
        let size = acts.size();
        let (prompts, heads, latents) = (size[0], size[1], size[2]);
        let k = (k as i64).clamp(1, latents);
        let (values, indices) = acts
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .view([prompts * heads, latents])
            .topk(k, 1, true, true);
        let values = Vec::<f32>::try_from(values.flatten(0, -1)).expect("f32 values");
        let indices = Vec::<i64>::try_from(indices.flatten(0, -1)).expect("i64 indices");
        let codes = values
            .chunks(k as usize)
            .zip(indices.chunks(k as usize))
            .map(|(v, i)| {
                let active: Vec<u32> = v
                    .iter()
                    .zip(i)
                    .filter(|(v, _)| **v > 0.0)
                    .map(|(_, &i)| i as u32)
                    .collect();
                if active.is_empty() {
                    vec![SILENT]
                } else {
                    active
                }
            })
            .collect();
        Codes {
            heads: heads as usize,
            codes,
        }
    }

    /// Prompts held.
    pub fn prompts(&self) -> usize {
        self.codes.len() / self.heads.max(1)
    }

    /// The codes of `head` on `prompt`.
    pub fn at(&self, prompt: usize, head: usize) -> &[u32] {
        &self.codes[prompt * self.heads + head]
    }

    fn set_of(&self, head: usize) -> HashSet<u32> {
        (0..self.prompts())
            .flat_map(|p| self.at(p, head).iter().copied())
            .collect()
    }
}

/// One head's node score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeScore {
    /// Distinct codes the head shows on positives and on no negative.
    pub unique: usize,
    /// Distinct codes it shows on either.
    pub union: usize,
}

impl NodeScore {
    /// `unique / union` (0 for a head with no codes).
    pub fn normalised(&self) -> f64 {
        self.unique as f64 / self.union.max(1) as f64
    }
}

/// Each head's node score from the codes of the positives and of the negatives.
pub fn node_scores(positive: &Codes, negative: &Codes) -> Vec<NodeScore> {
    assert_eq!(positive.heads, negative.heads, "one head set");
    (0..positive.heads)
        .map(|h| {
            let (pos, neg) = (positive.set_of(h), negative.set_of(h));
            NodeScore {
                unique: pos.difference(&neg).count(),
                union: pos.union(&neg).count(),
            }
        })
        .collect()
}

/// A pair of heads, the first in an earlier layer, with the code pairs they show together on
/// a positive and never on a negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeScore {
    /// The earlier head (flat index: its layer's place among the scored layers × heads per
    /// layer + head).
    pub from: usize,
    /// The later head.
    pub to: usize,
    /// Distinct code pairs on positives and on no negative.
    pub unique: usize,
}

fn pairs(codes: &Codes, a: usize, b: usize) -> Vec<u64> {
    let mut out: Vec<u64> = (0..codes.prompts())
        .flat_map(|p| {
            let (ca, cb) = (codes.at(p, a), codes.at(p, b));
            ca.iter()
                .flat_map(move |&x| cb.iter().map(move |&y| (u64::from(x) << 32) | u64::from(y)))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The score of every pair of heads in different layers, earlier first, in the order of
/// `(from, to)`; `heads_per_layer` says which layer a flat head index is in. A pair's
/// direction is the residual stream's: only an earlier head's write can reach a later one.
pub fn edge_scores(positive: &Codes, negative: &Codes, heads_per_layer: usize) -> Vec<EdgeScore> {
    let n = positive.heads;
    (0..n)
        .into_par_iter()
        .flat_map_iter(|a| {
            let first_later = (a / heads_per_layer + 1) * heads_per_layer;
            (first_later..n).map(move |b| {
                let (pos, neg) = (pairs(positive, a, b), pairs(negative, a, b));
                let unique = pos.iter().filter(|x| neg.binary_search(x).is_err()).count();
                EdgeScore {
                    from: a,
                    to: b,
                    unique,
                }
            })
        })
        .collect()
}

/// Each head's score from the edges: how often it appears among the best-scoring pairs, as
/// many as half of all pairs (the method's k = pairs / 2), pairs that score 0 left out and
/// ties at the cut broken by head order.
pub fn edge_node_scores(edges: &[EdgeScore], heads: usize) -> Vec<f64> {
    let mut order: Vec<&EdgeScore> = edges.iter().filter(|e| e.unique > 0).collect();
    order.sort_by(|a, b| {
        b.unique
            .cmp(&a.unique)
            .then((a.from, a.to).cmp(&(b.from, b.to)))
    });
    let mut counts = vec![0.0; heads];
    for e in order.iter().take(edges.len().div_ceil(2)) {
        counts[e.from] += 1.0;
        counts[e.to] += 1.0;
    }
    counts
}

/// The softmax of `scores`: the method's probability that each head is in the circuit.
pub fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(heads: usize, rows: &[&[u32]]) -> Codes {
        Codes {
            heads,
            codes: rows.iter().map(|r| r.to_vec()).collect(),
        }
    }

    #[test]
    fn node_scores_count_codes_seen_on_positives_only() {
        // Two prompts × two heads each side.
        let pos = codes(2, &[&[1], &[5], &[2], &[5]]);
        let neg = codes(2, &[&[1], &[6], &[3], &[5]]);
        let s = node_scores(&pos, &neg);
        // Head 0: {1, 2} less {1, 3} = {2}; union {1, 2, 3}. Head 1: {5} less {6, 5} = {}.
        assert_eq!(
            s[0],
            NodeScore {
                unique: 1,
                union: 3
            }
        );
        assert_eq!(
            s[1],
            NodeScore {
                unique: 0,
                union: 2
            }
        );
        assert!((s[0].normalised() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn top_k_codes_keep_only_active_latents_and_mark_silent_heads() {
        // One prompt, three heads, four latents.
        let acts = Tensor::from_slice(&[
            0.0f32, 3.0, 1.0, 0.0, //
            0.0, 0.0, 0.0, 0.0, //
            2.0, 0.0, 0.0, 0.0,
        ])
        .view([1, 3, 4]);
        let c = Codes::from_activations(&acts, 2);
        assert_eq!(c.codes, vec![vec![1, 2], vec![SILENT], vec![0]]);
        let argmax = Codes::from_activations(&acts, 1);
        assert_eq!(argmax.codes, vec![vec![1], vec![SILENT], vec![0]]);
    }

    #[test]
    fn edges_join_earlier_heads_to_later_ones_by_pairs_unique_to_positives() {
        // Two layers of two heads; two prompts.
        let pos = codes(4, &[&[1], &[1], &[7], &[8], &[2], &[2], &[7], &[9]]);
        let neg = codes(4, &[&[1], &[1], &[7], &[0], &[3], &[3], &[3], &[3]]);
        let e = edge_scores(&pos, &neg, 2);
        let pairs: Vec<(usize, usize)> = e.iter().map(|e| (e.from, e.to)).collect();
        assert_eq!(pairs, vec![(0, 2), (0, 3), (1, 2), (1, 3)]);
        // (0, 2): positives {(1,7), (2,7)}, negatives {(1,7), (3,3)}: one unique.
        // (0, 3): {(1,8), (2,9)} vs {(1,0), (3,3)}: two.
        let unique: Vec<usize> = e.iter().map(|e| e.unique).collect();
        assert_eq!(unique, vec![1, 2, 1, 2]);
        // The better half: (0,3) and (1,3).
        assert_eq!(edge_node_scores(&e, 4), vec![1.0, 1.0, 0.0, 2.0]);
        let p = softmax(&[0.0, 1.0]);
        assert!((p[1] / p[0] - std::f64::consts::E).abs() < 1e-12);
    }
}
