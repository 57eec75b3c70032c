//! A ReLU dictionary with an L1 penalty, fit full-batch on a few thousand rows held in memory:
//! the small shared dictionary of circuit discovery by code overlap (O'Neill & Bui), which reads
//! every attention head's pooled write over about ten prompts.
//!
//! x̄ = x − b, a = ReLU(x̄ W_encᵀ + b_enc), x̂ = a W_dec + b, with one bias b before the encoder
//! and after the decoder, and unit-norm encoder and decoder rows (renormalised after every
//! step, so the L1 penalty cannot be dodged by growing the decoder). The loss is the mean
//! squared error per element plus `l1` times the mean over rows of Σ|a|. Inputs are divided
//! by one scale, s = mean‖x‖ / sqrt(d), so `l1` means the same whatever the hook's size.
//!
//! The data is small enough that autograd costs nothing worth a hand-written gradient: the
//! streaming learners in this crate are for harvests, this one for a matrix.

use crate::seeded::Seeded;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

/// The settings, with the paper's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L1Config {
    /// Latents (200).
    pub latents: usize,
    /// L1 coefficient on the mean activation sum per row (0.02).
    pub l1: f64,
    /// Adam's learning rate (1e-3).
    pub lr: f64,
    /// Full-batch steps (500).
    pub epochs: usize,
    /// Seeds the initial weights (0).
    pub seed: u64,
}

impl Default for L1Config {
    fn default() -> Self {
        L1Config {
            latents: 200,
            l1: 0.02,
            lr: 1e-3,
            epochs: 500,
            seed: 0,
        }
    }
}

/// A fitted dictionary; it reads raw rows (the input scale is folded in).
pub struct L1Sae {
    /// [latents, d], unit rows.
    pub w_enc: Tensor,
    /// [latents].
    pub b_enc: Tensor,
    /// [latents, d], unit rows.
    pub w_dec: Tensor,
    /// [d], subtracted before encoding and added after decoding.
    pub b: Tensor,
    /// Inputs are divided by this before the weights above.
    pub scale: f64,
}

fn unit_rows(t: &Tensor) -> Tensor {
    t / t
        .norm_scalaropt_dim(2, [1].as_slice(), true)
        .clamp_min(1e-12)
}

impl L1Sae {
    /// Fits a dictionary to the rows of `x` [n, d] (any device, read as f32).
    pub fn fit(x: &Tensor, cfg: &L1Config) -> L1Sae {
        let device = x.device();
        let x = x.to_kind(Kind::Float);
        let d = x.size()[1];
        let scale = (x
            .norm_scalaropt_dim(2, [1].as_slice(), false)
            .mean(Kind::Float)
            / (d as f64).sqrt())
        .double_value(&[])
        .max(1e-12);
        let x = &x / scale;
        let n = cfg.latents as i64;
        let mut seeded = Seeded::new(cfg.seed);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let w_enc = root.var_copy("w_enc", &unit_rows(&seeded.normal(&[n, d], device)));
        let w_dec = root.var_copy("w_dec", &w_enc.detach());
        let b_enc = root.var_copy("b_enc", &Tensor::zeros([n], (Kind::Float, device)));
        let b = root.var_copy("b", &x.mean_dim(0, false, Kind::Float));
        let mut opt = nn::Adam::default()
            .build(&vs, cfg.lr)
            .expect("Adam over the store's variables");
        for _ in 0..cfg.epochs {
            let a = (&x - &b).matmul(&w_enc.tr()) + &b_enc;
            let a = a.relu();
            let recon = a.matmul(&w_dec) + &b;
            let mse = (&recon - &x).square().mean(Kind::Float);
            let l1 = a
                .sum_dim_intlist([1].as_slice(), false, Kind::Float)
                .mean(Kind::Float);
            opt.backward_step(&(mse + cfg.l1 * l1));
            tch::no_grad(|| {
                for w in [&w_enc, &w_dec] {
                    let mut w = w.shallow_clone();
                    w.copy_(&unit_rows(&w));
                }
            });
        }
        let take = |t: &Tensor| t.detach().copy();
        L1Sae {
            w_enc: take(&w_enc),
            b_enc: take(&b_enc),
            w_dec: take(&w_dec),
            b: take(&b),
            scale,
        }
    }

    /// The latents' activations for rows `x` [n, d]: [n, latents].
    pub fn encode(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let x = x.to_kind(Kind::Float) / self.scale;
            ((x - &self.b).matmul(&self.w_enc.tr()) + &self.b_enc).relu()
        })
    }

    /// The reconstruction of rows `x` [n, d], in their own units.
    pub fn reconstruct(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| (self.encode(x).matmul(&self.w_dec) + &self.b) * self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Rows that are each one of a few planted directions times a positive amount, plus an
    /// offset: a ReLU/L1 dictionary must give each direction's rows their own strongest latent.
    #[test]
    fn planted_directions_get_their_own_strongest_latent() {
        let (k, d, per) = (6i64, 32i64, 40i64);
        let mut s = Seeded::new(7);
        let dirs = unit_rows(&s.normal(&[k, d], Device::Cpu));
        let amounts = s.uniform(&[k * per, 1], 1.0, 3.0, Device::Cpu);
        let which = Tensor::arange(k, (Kind::Int64, Device::Cpu))
            .repeat_interleave_self_int(per, None, None);
        let offset = s.normal(&[1, d], Device::Cpu) * 0.5;
        let x = dirs.index_select(0, &which) * amounts + offset;
        let sae = L1Sae::fit(
            &x,
            &L1Config {
                latents: 24,
                epochs: 800,
                l1: 0.01,
                lr: 3e-3,
                seed: 1,
            },
        );
        let codes = Vec::<i64>::try_from(sae.encode(&x).argmax(1, false)).unwrap();
        let which = Vec::<i64>::try_from(&which).unwrap();
        // Each direction's rows agree on one code, and no two directions share theirs.
        let mut owner = std::collections::HashMap::new();
        for (c, w) in codes.iter().zip(&which) {
            assert_eq!(*owner.entry(*c).or_insert(*w), *w, "code {c} is shared");
        }
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(
            distinct.len(),
            k as usize,
            "one code per direction: {codes:?}"
        );
        let fvu = (sae.reconstruct(&x) - &x).square().sum(Kind::Float)
            / (&x - x.mean_dim(0, true, Kind::Float))
                .square()
                .sum(Kind::Float);
        assert!(fvu.double_value(&[]) < 0.1, "fvu {}", fvu.double_value(&[]));
    }
}
