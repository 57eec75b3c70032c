//! Data with a planted dictionary, for checking that learners recover known features.
//!
//! Flat: each sample is Σ c_i a_i + noise over a few atoms drawn uniformly, with positive
//! coefficients. Hierarchical: atoms come in (parent, children) families; a child fires only
//! with its parent.

use crate::seeded::Seeded;
use tch::{Device, Kind, Tensor};

/// A planted dictionary and samples drawn from it.
pub struct Planted {
    /// The true atoms [n, d], unit rows.
    pub atoms: Tensor,
    /// Samples [N, d].
    pub data: Tensor,
}

/// `samples` rows of d-dimensional data, each the sum of `active` of `n` random unit atoms with
/// coefficients uniform in [0.5, 1.5], plus Gaussian noise of standard deviation `noise`.
pub fn flat(n: usize, d: usize, samples: usize, active: usize, noise: f64, seed: u64) -> Planted {
    let mut rng = Seeded::new(seed);
    let cpu = Device::Cpu;
    let (n, d, samples, active) = (n as i64, d as i64, samples as i64, active as i64);
    let atoms = rng.normal(&[n, d], cpu);
    let atoms = &atoms / atoms.norm_scalaropt_dim(2.0, [1], true);
    // `active` distinct atoms per sample: the first columns of a random ranking.
    let idx = rng
        .uniform(&[samples, n], 0.0, 1.0, cpu)
        .argsort(1, false)
        .narrow(1, 0, active);
    let coef = rng.uniform(&[samples, active], 0.5, 1.5, cpu);
    let codes = Tensor::zeros([samples, n], (Kind::Float, cpu)).scatter(1, &idx, &coef);
    let data = codes.matmul(&atoms) + rng.normal(&[samples, d], cpu) * noise;
    Planted { atoms, data }
}

/// Families of one parent and `children` children: a sample picks `families_active` families;
/// in each, the parent fires, and one child fires with probability 1/2.
pub fn hierarchical(
    families: usize,
    children: usize,
    d: usize,
    samples: usize,
    families_active: usize,
    noise: f64,
    seed: u64,
) -> Planted {
    let mut rng = Seeded::new(seed);
    let cpu = Device::Cpu;
    let per = 1 + children as i64;
    let (families, d, samples, fa) = (
        families as i64,
        d as i64,
        samples as i64,
        families_active as i64,
    );
    let n = families * per;
    let atoms = rng.normal(&[n, d], cpu);
    let atoms = &atoms / atoms.norm_scalaropt_dim(2.0, [1], true);
    let fam = rng
        .uniform(&[samples, families], 0.0, 1.0, cpu)
        .argsort(1, false)
        .narrow(1, 0, fa);
    let parent = &fam * per;
    // One child of each family, uniformly: floor(u · children) in 0..children.
    let which = (rng.uniform(&[samples, fa], 0.0, children as f64, cpu))
        .floor()
        .to_kind(Kind::Int64)
        .clamp_max(children as i64 - 1);
    let child = &parent + 1 + which;
    let child_on = rng
        .uniform(&[samples, fa], 0.0, 1.0, cpu)
        .lt(0.5)
        .to_kind(Kind::Float);
    let pc = rng.uniform(&[samples, fa], 0.5, 1.5, cpu);
    let cc = rng.uniform(&[samples, fa], 0.5, 1.5, cpu) * child_on;
    let codes = Tensor::zeros([samples, n], (Kind::Float, cpu))
        .scatter(1, &parent, &pc)
        .scatter_add(1, &child, &cc);
    let data = codes.matmul(&atoms) + rng.normal(&[samples, d], cpu) * noise;
    Planted { atoms, data }
}

/// Mean over true atoms of the best |cosine| with a learned atom (1 = every atom recovered).
pub fn recovery(truth: &Tensor, learned: &Tensor) -> f64 {
    let t = truth / truth.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12);
    let l = learned / learned.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12);
    t.matmul(&l.tr())
        .abs()
        .amax(1, false)
        .mean(Kind::Float)
        .double_value(&[])
}
