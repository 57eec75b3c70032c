//! SNMF: semi-nonnegative matrix factorization of MLP activations (Shafran, Geiger and Geva
//! 2025). With A [N tokens, m neurons]:  A ≈ G Fᵀ, G ≥ 0 [N, K] the feature activations and
//! F [m, K] the features, mixed-sign and sparse over neurons. One iteration:
//!   1. F ← Aᵀ G (GᵀG + ridge·I)⁻¹                         (closed-form least squares)
//!   2. keep, in each column of F, the ⌈sparsity·m⌉ entries largest in magnitude
//!   3. move each column norm of G onto F (G's columns become unit-norm)
//!   4. G ← G ⊙ sqrt((P⁺ + G Q⁻) / (P⁻ + G Q⁺ + δ)),  P = A F, Q = FᵀF   (Ding et al.)
//!   5. keep the best (F, G) by ‖A − G Fᵀ‖²; stop after `patience` iterations without gain
//!
//! New activations are encoded by nonnegative least squares against F (the same update of G
//! with F fixed), so SNMF features can be read on new text like an SAE's.

use crate::seeded::Seeded;
use tch::{Device, Kind, Tensor};

/// SNMF settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SnmfConfig {
    /// Fraction of neurons kept per feature (winner-take-all).
    pub sparsity: f64,
    /// Ridge added to GᵀG in the F update.
    pub ridge: f64,
    /// Full-batch iterations at most (500).
    pub max_iter: usize,
    /// Full-batch: stop after this many iterations without a `tol` gain (100).
    pub patience: usize,
    /// Smallest relative loss improvement that resets patience.
    pub tol: f64,
    /// Tokens per minibatch for the online variant (0: full batch).
    pub minibatch: usize,
    /// Multiplicative-update iterations per minibatch (online) or per encoding.
    pub inner_iter: usize,
}

impl Default for SnmfConfig {
    fn default() -> Self {
        SnmfConfig {
            sparsity: 0.01,
            ridge: 1e-6,
            max_iter: 500,
            patience: 100,
            tol: 1e-4,
            minibatch: 0,
            inner_iter: 50,
        }
    }
}

/// The bytes a full-batch fit holds: A, G, their products and the best copies, in f32.
pub fn full_batch_bytes(tokens: usize, neurons: usize, features: usize) -> u64 {
    // A, P = A F and G ⊙ (…) temporaries, plus G and best G.
    4 * tokens as u64 * (neurons as u64 + 5 * features as u64)
}

/// Fitted SNMF features; codes of new activations are solved for by [`Snmf::encode_dense`].
#[derive(Debug)]
pub struct Snmf {
    /// Features as rows [K, m] (Fᵀ), the dictionary's atoms.
    pub features: Tensor,
}

/// One multiplicative update of the nonnegative codes G [N, K] for A [N, m] ≈ G Fᵀ.
fn update_codes(a_f: &Tensor, g: &Tensor, q: &Tensor) -> Tensor {
    let (p_pos, p_neg) = (a_f.clamp_min(0.0), (-a_f).clamp_min(0.0));
    let (q_pos, q_neg) = (q.clamp_min(0.0), (-q).clamp_min(0.0));
    let num = p_pos + g.matmul(&q_neg);
    let den = p_neg + g.matmul(&q_pos) + 1e-6;
    g * (num / den).sqrt()
}

/// Keeps the `keep` largest-magnitude entries of each column of F [m, K].
fn winner_take_all(f: &Tensor, keep: i64) -> Tensor {
    let (_, idx) = f.abs().topk(keep, 0, true, false);
    let mask = Tensor::zeros_like(f).scatter_value(0, &idx, 1.0);
    f * mask
}

/// Squared reconstruction error ‖A − G Fᵀ‖².
pub fn loss(a: &Tensor, g: &Tensor, f: &Tensor) -> f64 {
    (a - g.matmul(&f.tr()))
        .square()
        .sum(Kind::Float)
        .double_value(&[])
}

/// Progress reported after each iteration: (iteration, loss).
pub type Progress<'a> = &'a mut dyn FnMut(usize, f64);

impl Snmf {
    /// Number of features K (rows of `features`).
    pub fn n_latents(&self) -> usize {
        self.features.size()[0] as usize
    }

    /// Full-batch fit of A [N, m] with `k` features, from a seeded random start. Returns the
    /// model, the codes G of A, and the best loss.
    pub fn fit(
        a: &Tensor,
        k: usize,
        cfg: &SnmfConfig,
        seed: u64,
        progress: Progress,
    ) -> (Snmf, Tensor, f64) {
        let (n, m) = a.size2().expect("[tokens, neurons]");
        let opts = (Kind::Float, a.device());
        let mut g = Seeded::new(seed)
            .uniform(&[n, k as i64], 0.0, 1.0, a.device())
            .clamp_min(1e-6);
        let keep = ((cfg.sparsity * m as f64).ceil() as i64).clamp(1, m);
        let eye = Tensor::eye(k as i64, opts) * cfg.ridge;
        let (mut best, mut best_f, mut best_g) =
            (f64::INFINITY, Tensor::zeros([m, k as i64], opts), g.copy());
        let mut since = 0;
        for it in 0..cfg.max_iter {
            let gtg = g.tr().matmul(&g) + &eye;
            let f = Tensor::linalg_solve(&gtg, &g.tr().matmul(a), true).tr(); // [m, K]
            let mut f = winner_take_all(&f, keep);
            let norms = g.norm_scalaropt_dim(2.0, [0], true).clamp_min(1e-12); // [1, K]
            g = &g / &norms;
            f = &f * &norms;
            g = update_codes(&a.matmul(&f), &g, &f.tr().matmul(&f));
            let l = loss(a, &g, &f);
            progress(it, l);
            if l < best * (1.0 - cfg.tol) {
                since = 0;
            } else {
                since += 1;
            }
            if l < best {
                best = l;
                best_f = f;
                best_g = g.copy();
            }
            if since >= cfg.patience {
                break;
            }
        }
        (
            Snmf {
                features: best_f.tr().contiguous(),
            },
            best_g,
            best,
        )
    }

    /// Online fit over minibatches of rows: each minibatch's codes are solved with F fixed,
    /// then F is the ridge solution of the running sufficient statistics AᵀG and GᵀG. Memory
    /// holds one minibatch, not the whole matrix.
    pub fn fit_online(
        batches: &mut dyn Iterator<Item = Tensor>,
        m: usize,
        k: usize,
        cfg: &SnmfConfig,
        seed: u64,
        device: Device,
        progress: Progress,
    ) -> Snmf {
        let opts = (Kind::Float, device);
        let keep = ((cfg.sparsity * m as f64).ceil() as i64).clamp(1, m as i64);
        let mut f = winner_take_all(
            &Seeded::new(seed).normal(&[m as i64, k as i64], device),
            keep,
        );
        let mut atg = Tensor::zeros([m as i64, k as i64], opts);
        let mut gtg = Tensor::zeros([k as i64, k as i64], opts);
        let eye = Tensor::eye(k as i64, opts) * cfg.ridge.max(1e-6);
        for (i, a) in batches.enumerate() {
            let a = a.to_device(device);
            let snmf = Snmf {
                features: f.tr().contiguous(),
            };
            let g = snmf.encode_dense(&a, cfg.inner_iter);
            atg += a.tr().matmul(&g);
            gtg += g.tr().matmul(&g);
            f = winner_take_all(
                &Tensor::linalg_solve(&(&gtg + &eye), &atg.tr(), true).tr(),
                keep,
            );
            progress(i, loss(&a, &g, &f) / a.size()[0] as f64);
        }
        Snmf {
            features: f.tr().contiguous(),
        }
    }

    /// Nonnegative codes of new activations A [N, m] against the learned features, by
    /// multiplicative updates from a least-squares start clipped at zero.
    pub fn encode_dense(&self, a: &Tensor, iters: usize) -> Tensor {
        let f = self.features.tr(); // [m, K]
        let q = f.tr().matmul(&f);
        let a_f = a.matmul(&f);
        let k = q.size()[0];
        let eye = Tensor::eye(k, (Kind::Float, a.device())) * 1e-6;
        let mut g = Tensor::linalg_solve(&(&q + eye), &a_f.tr(), true)
            .tr()
            .clamp_min(1e-6);
        for _ in 0..iters {
            g = update_codes(&a_f, &g, &q);
        }
        g
    }
}
