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
//!
//! On the CPU, a pursuit of a fixed number of steps (training, and encoding with the default
//! stop) runs in saescope's own kernels ([`saescope_kernels::pursue`] and its backward), each
//! token's steps while its correlations stay in cache; the tensor form below serves the GPU and
//! the adaptive stops.

use crate::loss::Fvu;
use crate::sparse::SparseCodes;
use saescope_kernels::{Pursued, pursue, pursue_backward};
use tch::{Kind, Tensor};

/// An MP-SAE: tied unit-norm atoms and a bias; the pursuit is the encoder.
#[derive(Debug)]
pub struct MpSae {
    /// Atoms [n, d], unit rows.
    pub atoms: Tensor,
    /// Bias b [d]: subtracted before the pursuit, added back to the reconstruction.
    pub b_dec: Tensor,
    /// Pursuit steps in training, and the default at inference.
    pub k: usize,
    /// Keep the Gram matrix in bf16 (and, in the CPU kernels, compute the first correlations
    /// by a bf16 matmul). The correlations only choose each step's atom; the coefficient is
    /// always the exact f32 projection. Halves the Gram's cost and its memory traffic, and on
    /// planted data changes about one pick in ten (mostly among near-ties) without a
    /// measurable change in reconstruction error.
    pub bf16_gram: bool,
}

/// When the pursuit stops, token by token. The three settings are SAELens' (`max_iterations`,
/// `residual_threshold`, `stop_on_duplicate_support`) with the same meaning, so a dictionary
/// saved with them encodes alike in both.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stop {
    /// Steps at most.
    pub max_steps: usize,
    /// Stop a token once, after a step, its residual's norm is below this (input units);
    /// 0 turns the rule off.
    pub residual_threshold: f64,
    /// Stop a token after a step that left its set of active latents unchanged (it picked an
    /// atom already active, or added nothing).
    pub duplicate_support: bool,
}

impl Stop {
    /// Exactly `k` steps for every token: how saescope trains, and its default at inference.
    pub fn steps(k: usize) -> Stop {
        Stop {
            max_steps: k,
            residual_threshold: 0.0,
            duplicate_support: false,
        }
    }

    /// Whether tokens can stop before `max_steps` (then L0 varies by token).
    pub fn is_adaptive(&self) -> bool {
        self.residual_threshold > 0.0 || self.duplicate_support
    }
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

/// Rows per pursuit block on the CPU: 64 tokens' correlations over 16k latents are 4 MB.
const CPU_BLOCK_ROWS: i64 = 64;

impl Pursuit {
    /// Stacks blocks of rows; a block that stopped early gets zero coefficients (picks of
    /// atom 0, which nothing reads) for the steps it skipped.
    fn concat(blocks: Vec<Pursuit>) -> Pursuit {
        let steps = blocks.iter().map(|p| p.picks.len()).max().unwrap_or(0);
        let keep = blocks.iter().any(|p| !p.before.is_empty());
        let mut out = Pursuit {
            picks: Vec::with_capacity(steps),
            coefs: Vec::with_capacity(steps),
            before: Vec::new(),
            residual: Tensor::cat(&blocks.iter().map(|p| &p.residual).collect::<Vec<_>>(), 0),
        };
        for t in 0..steps {
            let pick = |p: &Pursuit| match p.picks.get(t) {
                Some(j) => j.shallow_clone(),
                None => p.residual.zeros_like().select(1, 0).to_kind(Kind::Int64),
            };
            let coef = |p: &Pursuit| match p.coefs.get(t) {
                Some(a) => a.shallow_clone(),
                None => p.residual.zeros_like().select(1, 0),
            };
            out.picks
                .push(Tensor::cat(&blocks.iter().map(pick).collect::<Vec<_>>(), 0));
            out.coefs
                .push(Tensor::cat(&blocks.iter().map(coef).collect::<Vec<_>>(), 0));
            if keep {
                let before = |p: &Pursuit| match p.before.get(t) {
                    Some(r) => r.shallow_clone(),
                    None => p.residual.shallow_clone(),
                };
                out.before.push(Tensor::cat(
                    &blocks.iter().map(before).collect::<Vec<_>>(),
                    0,
                ));
            }
        }
        out
    }
}

/// What one MP-SAE training forward and backward produced; gradients are of the FVU.
pub struct Step {
    /// Gradient for `atoms` [n, d], nonzero only on rows the pursuit picked.
    pub atoms_grad: Tensor,
    /// Gradient for `b_dec` [d].
    pub b_dec_grad: Tensor,
    /// The k-step pursuit's codes, repeated picks merged.
    pub codes: SparseCodes,
    /// The reconstruction x̂ = x − r^T [B, d].
    pub recon: Tensor,
    /// Σ‖x̂ − x‖² / Σ‖x − mean(x)‖² over the batch, the loss: an f64 scalar tensor on the
    /// batch's device ([`crate::loss`]).
    pub fvu: Tensor,
}

impl MpSae {
    /// Number of latents n (rows of `atoms`).
    pub fn n_latents(&self) -> usize {
        self.atoms.size()[0] as usize
    }

    /// Input width d (columns of `atoms`).
    pub fn d_in(&self) -> usize {
        self.atoms.size()[1] as usize
    }

    /// Runs the pursuit on x [B, d].
    ///
    /// The correlations of all tokens come from one matmul; the pursuit then walks the batch in
    /// blocks of rows small enough for their correlations to stay in cache across all steps
    /// (on the CPU every step is memory-bound: reading a Gram row and rewriting a correlation
    /// row per token).
    pub fn pursue(&self, x: &Tensor, stop: Stop, keep_residuals: bool) -> Pursuit {
        let r = x - &self.b_dec;
        let c = r.matmul(&self.atoms.tr());
        let gram = self.gram();
        let rows = if x.device() == tch::Device::Cpu {
            CPU_BLOCK_ROWS
        } else {
            x.size()[0].max(1)
        };
        let blocks: Vec<Pursuit> = r
            .split(rows, 0)
            .into_iter()
            .zip(c.split(rows, 0))
            .map(|(r, c)| self.pursue_block(r, c, &gram, stop, keep_residuals))
            .collect();
        Pursuit::concat(blocks)
    }

    /// The atoms in the Gram matrix's kind: bf16 with `bf16_gram`.
    fn gram_atoms(&self) -> Tensor {
        if self.bf16_gram {
            self.atoms.to_kind(Kind::BFloat16)
        } else {
            self.atoms.shallow_clone()
        }
    }

    /// The atoms' Gram matrix D Dᵀ [n, n], bf16 with `bf16_gram`.
    fn gram(&self) -> Tensor {
        gram_of(&self.gram_atoms())
    }

    /// The k-step pursuit by saescope's own CPU kernel, or `None` where it does not run (a GPU).
    /// With `bf16_gram` the first correlations come from a bf16 matmul too: they only choose.
    fn pursue_fixed(&self, x: &Tensor) -> Option<(Tensor, Pursued)> {
        if x.device() != tch::Device::Cpu || self.atoms.kind() != Kind::Float {
            return None;
        }
        let r = (x - &self.b_dec).contiguous();
        let a = self.gram_atoms();
        let c = r.to_kind(a.kind()).matmul(&a.tr());
        let atoms = self.atoms.contiguous();
        let p = pursue(&r, &c, &atoms, &gram_of(&a), self.k)?;
        Some((atoms, p))
    }

    fn pursue_block(
        &self,
        mut r: Tensor,
        mut c: Tensor,
        gram: &Tensor,
        stop: Stop,
        keep_residuals: bool,
    ) -> Pursuit {
        let b = r.size()[0];
        let device = r.device();
        let one_each = Tensor::arange(b, (Kind::Int64, device));
        let mut active = Tensor::ones([b], (Kind::Bool, device));
        let mut p = Pursuit {
            picks: Vec::with_capacity(stop.max_steps),
            coefs: Vec::with_capacity(stop.max_steps),
            before: Vec::new(),
            residual: Tensor::empty([0], (Kind::Float, device)),
        };
        for _ in 0..stop.max_steps {
            let j = c.argmax(1, false);
            let d = self.atoms.index_select(0, &j);
            // The exact projection on the current atom (c only selects).
            let alpha = ((&d * &r).sum_dim_intlist(1, false, r.kind()).clamp_min(0.0))
                * active.to_kind(r.kind());
            if keep_residuals {
                p.before.push(r.shallow_clone());
            }
            r = &r - alpha.unsqueeze(1) * &d;
            // c ← c − α G[j], one pass: an embedding bag of one Gram row per token.
            let update = Tensor::embedding_bag(
                gram,
                &j,
                &one_each,
                false,
                0,
                false,
                Some(&alpha.to_kind(gram.kind())),
                false,
            )
            .0;
            let _ = c.g_sub_(&update);
            if stop.is_adaptive() {
                // A step that added nothing changes nothing from here on: the token is done
                // under either rule (SAELens would go on adding zeros).
                let mut done = alpha.le(0.0);
                if stop.duplicate_support && !p.picks.is_empty() {
                    let earlier = Tensor::stack(&p.picks, 0).eq_tensor(&j.unsqueeze(0));
                    let live = Tensor::stack(&p.coefs, 0).gt(0.0);
                    done = done.logical_or(&earlier.logical_and(&live).any_dim(0, false));
                }
                if stop.residual_threshold > 0.0 {
                    let norm = r.norm_scalaropt_dim(2.0, [1], false);
                    done = done.logical_or(&norm.lt(stop.residual_threshold));
                }
                active = active.logical_and(&done.logical_not());
            }
            p.picks.push(j);
            p.coefs.push(alpha);
            if stop.is_adaptive() && active.any().int64_value(&[]) == 0 {
                break;
            }
        }
        p.residual = r;
        p
    }

    /// The pursuit's codes, repeated picks of an atom merged (their coefficients add).
    pub fn codes_of(&self, p: &Pursuit, rows: i64) -> SparseCodes {
        if p.picks.is_empty() {
            let none = Tensor::zeros([rows, 0], (Kind::Int64, self.atoms.device()));
            return merged_codes(&none, &none.to_kind(Kind::Float), self.n_latents());
        }
        merged_codes(
            &Tensor::stack(&p.picks, 1),
            &Tensor::stack(&p.coefs, 1),
            self.n_latents(),
        )
    }

    /// Codes of x [B, d] from a pursuit that stops by `stop`, repeated picks merged.
    pub fn encode(&self, x: &Tensor, stop: Stop) -> SparseCodes {
        if stop == Stop::steps(self.k)
            && let Some((_, p)) = self.pursue_fixed(x)
        {
            return merged_codes(&p.picks, &p.coefs, self.n_latents());
        }
        let p = self.pursue(x, stop, false);
        self.codes_of(&p, x.size()[0])
    }

    /// The reconstruction [B, d] of `codes`: Σ_j f_j atoms[j] + b_dec.
    pub fn decode(&self, codes: &SparseCodes) -> Tensor {
        codes.combine(&self.atoms) + &self.b_dec
    }

    /// One training forward (k steps) and backward through the unroll, for the loss
    /// Σ‖x̂ − x‖² / Σ‖x − mean(x)‖².
    pub fn train_step(&self, x: &Tensor) -> Step {
        if let Some(step) = self.train_step_cpu(x) {
            return step;
        }
        let p = self.pursue(x, Stop::steps(self.k), true);
        let recon = x - &p.residual;
        let fvu = Fvu::of(&p.residual, x);
        // x̂ − x = −r^T, so dL/dr^T = 2 r^T / total_var.
        let mut g_r = &p.residual * &fvu.grad_scale;
        let mut g_atoms = Tensor::zeros_like(&self.atoms);
        for t in (0..p.picks.len()).rev() {
            let (j, alpha, r_prev) = (&p.picks[t], &p.coefs[t], &p.before[t]);
            let d = self.atoms.index_select(0, j);
            let live = alpha.gt(0.0).to_kind(g_r.kind()).unsqueeze(1);
            // r^t = r^{t−1} − α d with α = d·r^{t−1}:
            let g_alpha = -(&g_r * &d).sum_dim_intlist(1, true, g_r.kind()) * &live;
            let g_d = &g_alpha * r_prev - alpha.unsqueeze(1) * &g_r;
            g_r = &g_r + &g_alpha * &d;
            let _ = g_atoms.index_add_(0, j, &g_d);
        }
        let b_dec_grad = -g_r.sum_dim_intlist(0, false, g_r.kind());
        let codes = self.codes_of(&p, x.size()[0]);
        Step {
            atoms_grad: g_atoms,
            b_dec_grad,
            codes,
            recon,
            fvu: fvu.value,
        }
    }

    /// [`MpSae::train_step`] through the own pursuit kernels: the same loss and gradients, each
    /// step's residual rebuilt in the backward instead of stored.
    fn train_step_cpu(&self, x: &Tensor) -> Option<Step> {
        let (atoms, p) = self.pursue_fixed(x)?;
        let fvu = Fvu::of(&p.residual, x);
        let g_r = &p.residual * &fvu.grad_scale;
        let (atoms_grad, g_first) = pursue_backward(&atoms, &p.picks, &p.coefs, &p.residual, &g_r)?;
        Some(Step {
            atoms_grad,
            b_dec_grad: -g_first.sum_dim_intlist(0, false, Kind::Float),
            codes: merged_codes(&p.picks, &p.coefs, self.n_latents()),
            recon: x - &p.residual,
            fvu: fvu.value,
        })
    }
}

/// D Dᵀ for atoms D [n, d], against a copy: libtorch sends a product of a matrix with its own
/// transpose to a symmetric kernel that ran 7x slower here (1.05 s against 0.14 s in bf16).
fn gram_of(a: &Tensor) -> Tensor {
    a.matmul(&a.copy().tr())
}

/// Codes from each token's picks and coefficients [B, T]: repeated picks of an atom merged
/// (coefficients added, in step order), zeros dropped, columns in increasing order.
fn merged_codes(picks: &Tensor, coefs: &Tensor, n_latents: usize) -> SparseCodes {
    let (rows, steps) = picks.size2().expect("[B, T] picks");
    let n = n_latents as i64;
    let (cols, order) = picks.sort_stable(true, 1, false);
    let vals = coefs.gather(1, &order, false).reshape([-1]);
    let row = Tensor::arange(rows, (Kind::Int64, picks.device()))
        .unsqueeze(1)
        .expand([rows, steps], false);
    let key = (row * n + cols).reshape([-1]); // increasing: by row, then column
    let (unique, inverse, _) = key.unique_consecutive(true, false, None::<i64>);
    let sums = Tensor::zeros([unique.size()[0]], (vals.kind(), vals.device()))
        .index_add(0, &inverse, &vals);
    let kept = sums.gt(0.0);
    let (unique, vals) = (unique.masked_select(&kept), sums.masked_select(&kept));
    let r = unique.divide_scalar_mode(n, "floor");
    SparseCodes::from_entries(&r, unique.remainder(n), vals, rows, n)
}
