//! Data with a planted dictionary, for checking that learners recover known features.
//!
//! Flat: each sample is Σ c_i a_i + noise over a few atoms drawn uniformly, with positive
//! coefficients. Hierarchical: atoms come in (parent, children) families; a child fires only
//! with its parent.

use tch::{Device, Kind, Tensor};

pub struct Planted {
    /// The true atoms [n, d], unit rows.
    pub atoms: Tensor,
    /// Samples [N, d].
    pub data: Tensor,
}

/// `samples` rows of d-dimensional data, each the sum of `active` of `n` random unit atoms with
/// coefficients uniform in [0.5, 1.5], plus Gaussian noise of standard deviation `noise`.
pub fn flat(n: usize, d: usize, samples: usize, active: usize, noise: f64, seed: u64) -> Planted {
    tch::manual_seed(seed as i64);
    let opts = (Kind::Float, Device::Cpu);
    let atoms = Tensor::randn([n as i64, d as i64], opts);
    let atoms = &atoms / atoms.norm_scalaropt_dim(2.0, [1], true);
    // `active` distinct atoms per sample: the first columns of a random ranking.
    let idx = Tensor::rand([samples as i64, n as i64], opts)
        .argsort(1, false)
        .narrow(1, 0, active as i64);
    let coef = Tensor::rand([samples as i64, active as i64], opts) + 0.5;
    let codes = Tensor::zeros([samples as i64, n as i64], opts).scatter(1, &idx, &coef);
    let data = codes.matmul(&atoms) + Tensor::randn([samples as i64, d as i64], opts) * noise;
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
    tch::manual_seed(seed as i64);
    let opts = (Kind::Float, Device::Cpu);
    let per = 1 + children;
    let n = families * per;
    let atoms = Tensor::randn([n as i64, d as i64], opts);
    let atoms = &atoms / atoms.norm_scalaropt_dim(2.0, [1], true);
    let fam = Tensor::rand([samples as i64, families as i64], opts)
        .argsort(1, false)
        .narrow(1, 0, families_active as i64);
    let parent = &fam * per as i64;
    let child = &parent
        + 1
        + Tensor::randint(
            children as i64,
            [samples as i64, families_active as i64],
            (Kind::Int64, Device::Cpu),
        );
    let child_on = Tensor::rand([samples as i64, families_active as i64], opts)
        .lt(0.5)
        .to_kind(Kind::Float);
    let pc = Tensor::rand([samples as i64, families_active as i64], opts) + 0.5;
    let cc = (Tensor::rand([samples as i64, families_active as i64], opts) + 0.5) * child_on;
    let codes = Tensor::zeros([samples as i64, n as i64], opts)
        .scatter(1, &parent, &pc)
        .scatter_add(1, &child, &cc);
    let data = codes.matmul(&atoms) + Tensor::randn([samples as i64, d as i64], opts) * noise;
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
