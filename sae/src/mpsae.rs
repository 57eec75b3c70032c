//! MP-SAE: a matching-pursuit encoder over a tied dictionary of unit-norm atoms (Costa et al.
//! 2025), trained by backpropagating through the unrolled pursuit.
//!
//!   r⁰ = x − b;  for t = 1..T:  j_t = argmax_j (D r^{t−1})_j,  α_t = relu(d_{j_t} · r^{t−1}),
//!                               r^t = r^{t−1} − α_t d_{j_t}
//!   x̂ = b + Σ_t α_t d_{j_t} = x − r^T
//!
//! The correlations c = D r are computed once per batch (one dense matmul) and then updated
//! from the Gram matrix of the atoms, c ← c − α_t G[j_t], instead of a matmul per step. The
//! gradient flows through every α_t and residual update, touching only the selected atoms.

use crate::sparse::SparseCodes;
use crate::topk::centred_sq_sum;
use tch::{Kind, Tensor};

#[derive(Debug)]
pub struct MpSae {
    /// Atoms [n, d], unit rows.
    pub atoms: Tensor,
    pub b_dec: Tensor,
    /// Pursuit steps in training, and the default at inference.
    pub k: usize,
}

/// How inference decides when to stop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// Exactly this many steps.
    Steps(usize),
    /// Per token: stop once ‖r‖ < threshold (input units) or the best correlation is not
    /// positive, after at most `max_steps`. L0 varies by token.
    Residual { threshold: f64, max_steps: usize },
}

/// One unrolled pursuit: the selections, coefficients and residuals needed by the backward.
pub struct Pursuit {
    /// Selected atom per step, [T] of [B].
    pub picks: Vec<Tensor>,
    /// Coefficient per step (0 when the token had stopped), [T] of [B].
    pub coefs: Vec<Tensor>,
    /// Residual before each step, [T] of [B, d] (kept only for training).
    pub before: Vec<Tensor>,
    /// Final residual [B, d].
    pub residual: Tensor,
}

pub struct Step {
    pub atoms_grad: Tensor,
    pub b_dec_grad: Tensor,
    pub codes: SparseCodes,
    pub recon: Tensor,
    pub fvu: f64,
}

impl MpSae {
    pub fn n_latents(&self) -> usize {
        self.atoms.size()[0] as usize
    }

    pub fn d_in(&self) -> usize {
        self.atoms.size()[1] as usize
    }

    /// Runs the pursuit on x [B, d].
    pub fn pursue(&self, x: &Tensor, stop: Stop, keep_residuals: bool) -> Pursuit {
        let (max_steps, threshold) = match stop {
            Stop::Steps(t) => (t, None),
            Stop::Residual {
                threshold,
                max_steps,
            } => (max_steps, Some(threshold)),
        };
        let mut r = x - &self.b_dec;
        let mut c = r.matmul(&self.atoms.tr());
        let gram = self.atoms.matmul(&self.atoms.tr());
        let mut active = Tensor::ones([x.size()[0]], (Kind::Bool, x.device()));
        let mut p = Pursuit {
            picks: Vec::with_capacity(max_steps),
            coefs: Vec::with_capacity(max_steps),
            before: Vec::new(),
            residual: Tensor::empty([0], (Kind::Float, x.device())),
        };
        for _ in 0..max_steps {
            if let Some(th) = threshold {
                let norm = r.norm_scalaropt_dim(2.0, [1], false);
                active = active.logical_and(&norm.ge(th));
                if active.any().int64_value(&[]) == 0 {
                    break;
                }
            }
            let j = c.argmax(1, false);
            let d = self.atoms.index_select(0, &j);
            // The exact projection on the current atom (c only selects).
            let alpha = ((&d * &r)
                .sum_dim_intlist(1, false, Kind::Float)
                .clamp_min(0.0))
                * active.to_kind(Kind::Float);
            if threshold.is_some() {
                active = active.logical_and(&alpha.gt(0.0));
            }
            if keep_residuals {
                p.before.push(r.shallow_clone());
            }
            r = &r - alpha.unsqueeze(1) * &d;
            let _ = c.g_sub_(&(gram.index_select(0, &j) * alpha.unsqueeze(1)));
            p.picks.push(j);
            p.coefs.push(alpha);
        }
        p.residual = r;
        p
    }

    /// The pursuit's codes, repeated picks of an atom merged (their coefficients add).
    pub fn codes_of(&self, p: &Pursuit, rows: i64) -> SparseCodes {
        let mut dense = Tensor::zeros(
            [rows, self.n_latents() as i64],
            (Kind::Float, self.atoms.device()),
        );
        for (j, a) in p.picks.iter().zip(&p.coefs) {
            let _ = dense.scatter_add_(1, &j.unsqueeze(1), &a.unsqueeze(1));
        }
        SparseCodes::from_dense(&dense)
    }

    pub fn encode(&self, x: &Tensor, stop: Stop) -> SparseCodes {
        let p = self.pursue(x, stop, false);
        self.codes_of(&p, x.size()[0])
    }

    pub fn decode(&self, codes: &SparseCodes) -> Tensor {
        codes.combine(&self.atoms) + &self.b_dec
    }

    /// One training forward (k steps) and backward through the unroll, for the loss
    /// Σ‖x̂ − x‖² / Σ‖x − mean(x)‖².
    pub fn train_step(&self, x: &Tensor) -> Step {
        let p = self.pursue(x, Stop::Steps(self.k), true);
        let total_var = centred_sq_sum(x);
        let recon = x - &p.residual;
        let fvu = p.residual.square().sum(p.residual.kind()).double_value(&[]) / total_var;
        // x̂ − x = −r^T, so dL/dr^T = 2 r^T / total_var.
        let mut g_r = &p.residual * (2.0 / total_var);
        let mut g_atoms = Tensor::zeros_like(&self.atoms);
        for t in (0..p.picks.len()).rev() {
            let (j, alpha, r_prev) = (&p.picks[t], &p.coefs[t], &p.before[t]);
            let d = self.atoms.index_select(0, j);
            let live = alpha.gt(0.0).to_kind(Kind::Float).unsqueeze(1);
            // r^t = r^{t−1} − α d with α = d·r^{t−1}:
            let g_alpha = -(&g_r * &d).sum_dim_intlist(1, true, Kind::Float) * &live;
            let g_d = &g_alpha * r_prev - alpha.unsqueeze(1) * &g_r;
            g_r = &g_r + &g_alpha * &d;
            let _ = g_atoms.index_add_(0, j, &g_d);
        }
        let b_dec_grad = -g_r.sum_dim_intlist(0, false, Kind::Float);
        let codes = self.codes_of(&p, x.size()[0]);
        Step {
            atoms_grad: g_atoms,
            b_dec_grad,
            codes,
            recon,
            fvu,
        }
    }
}
