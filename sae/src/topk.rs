//! TopK and BatchTopK sparse autoencoders (Gao et al. 2024; Bussmann et al. 2024), trained
//! with hand-written gradients so that only the selected latents are touched after the encoder.
//!
//!   pre = relu((x − b_dec) W_encᵀ + b_enc)
//!   TopK:      keep the k largest entries of each row of `pre`
//!   BatchTopK: keep the k·B largest entries of the whole batch (rows vary around k); at
//!              inference keep entries above a threshold θ learned as a running average
//!   x̂ = Σ_j f_j W_dec[j] + b_dec
//!
//! The encoder's dense matmul is the only step whose cost grows with batch x latents: decoding,
//! every gradient of the decoder, and the encoder's backward go through [`SparseCodes`].

use crate::sparse::{SparseCodes, row_starts};
use saescope_kernels::{affine, row_topk};
use tch::{Kind, Tensor};

/// Which selection rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// The k largest pre-activations of each row.
    TopK,
    /// The k·B largest pre-activations of a batch of B rows; a threshold at inference.
    BatchTopK,
}

/// The parameters of a TopK or BatchTopK SAE, in PyTorch's [out, in] orientation: row i of
/// `w_enc` and of `w_dec` belong to latent i.
#[derive(Debug)]
pub struct TopKSae {
    /// Encoder weights [n_latents, d_in].
    pub w_enc: Tensor,
    /// Encoder bias [n_latents], added after the matmul.
    pub b_enc: Tensor,
    /// Decoder atoms [n_latents, d_in], one per row; unit-norm during training.
    pub w_dec: Tensor,
    /// Decoder bias [d_in]: subtracted from the input before encoding, added back after.
    pub b_dec: Tensor,
    /// Active latents per row (TopK), or their mean over a batch (BatchTopK).
    pub k: usize,
    /// The training rule; inference uses `threshold`, or per-row top-k without one.
    pub selection: Selection,
    /// Inference threshold per latent [n] (BatchTopK, and imported JumpReLU dictionaries):
    /// a latent is active when its pre-activation exceeds it. None: top-k per row.
    pub threshold: Option<Tensor>,
    /// Run the encoder's dense matmul in bf16 and use it only to choose the latents; the
    /// chosen values are then recomputed in f32 (O(B·k·d)). bf16 matmuls run about twice as
    /// fast on CPUs with AVX-512 BF16 and on GPUs; a choice can differ only between near-ties.
    pub bf16_select: bool,
}

/// Gradients of the four parameters.
#[derive(Debug)]
pub struct Grads {
    /// The loss's gradient for `w_enc`, [n_latents, d_in].
    pub w_enc: Tensor,
    /// The loss's gradient for `b_enc`, [n_latents].
    pub b_enc: Tensor,
    /// The loss's gradient for `w_dec`, [n_latents, d_in], not yet projected against the atoms.
    pub w_dec: Tensor,
    /// The loss's gradient for `b_dec`, [d_in].
    pub b_dec: Tensor,
}

/// What one training forward and backward produced.
pub struct Step {
    /// Gradients of the loss FVU + coefficient · AuxK loss.
    pub grads: Grads,
    /// The training selection's codes for the batch.
    pub codes: SparseCodes,
    /// The reconstruction x̂ [B, d_in], b_dec included.
    pub recon: Tensor,
    /// Σ‖x̂ − x‖² / Σ‖x − mean(x)‖² over the batch.
    pub fvu: f64,
    /// The AuxK loss before its coefficient (0 without dead latents).
    pub aux: f64,
    /// The smallest selected positive value (BatchTopK's threshold sample).
    pub min_selected: Option<f64>,
}

/// AuxK settings: the dead latents predict the main reconstruction's error.
#[derive(Clone, Copy, Debug)]
pub struct AuxK {
    /// Number of dead latents used (capped at the number of dead ones).
    pub k_aux: usize,
    /// Weight of the AuxK loss in the total (`aux_coefficient`, 1/32 by default).
    pub coefficient: f64,
}

impl TopKSae {
    /// Number of latents n (rows of `w_enc`).
    pub fn n_latents(&self) -> usize {
        self.w_enc.size()[0] as usize
    }

    /// Input width d_in (columns of `w_enc`).
    pub fn d_in(&self) -> usize {
        self.w_enc.size()[1] as usize
    }

    /// Post-ReLU pre-activations [B, n] (bf16 with `bf16_select`) and the centred input
    /// x − b_dec.
    pub fn pre_acts(&self, x: &Tensor) -> (Tensor, Tensor) {
        let xc = x - &self.b_dec;
        let mut pre = if self.bf16_select {
            let h = |t: &Tensor| t.to_kind(Kind::BFloat16);
            h(&self.b_enc).addmm(&h(&xc), &h(&self.w_enc).tr())
        } else {
            affine(&xc, &self.w_enc, &self.b_enc)
        };
        (pre.relu_(), xc)
    }

    /// With `bf16_select`, the codes' values recomputed in f32 from the chosen latents:
    /// relu(xc · W_enc[j] + b_enc[j]).
    fn exact_values(&self, codes: SparseCodes, xc: &Tensor) -> SparseCodes {
        if !self.bf16_select {
            return codes;
        }
        let vals =
            (codes.dot_rows(&self.w_enc, xc) + self.b_enc.index_select(0, &codes.cols)).relu_();
        SparseCodes { vals, ..codes }
    }

    /// The training-time selection: per row (TopK) or over the whole batch (BatchTopK).
    pub fn select(&self, pre: &Tensor, xc: &Tensor) -> SparseCodes {
        let codes = self.select_from(pre);
        self.exact_values(codes, xc)
    }

    fn select_from(&self, pre: &Tensor) -> SparseCodes {
        let n = self.n_latents();
        match self.selection {
            Selection::TopK => {
                let (val, idx) = largest_per_row(pre, self.k);
                SparseCodes::from_topk(&idx, &val, n)
            }
            Selection::BatchTopK => {
                let (rows, _) = pre.size2().expect("2-D");
                let keep = (self.k as i64 * rows).min(pre.numel() as i64);
                let (_, flat) = pre.reshape([-1]).topk(keep, 0, true, false);
                // Row-major order groups the entries by row.
                let flat = flat.sort(0, false).0;
                let (r, c) = (
                    flat.divide_scalar_mode(n as i64, "floor"),
                    flat.remainder(n as i64),
                );
                let vals = pre.reshape([-1]).index_select(0, &flat);
                SparseCodes {
                    offsets: row_starts(&r, rows),
                    cols: c,
                    vals,
                    rows: rows as usize,
                    n_latents: n,
                }
            }
        }
    }

    /// Inference codes: TopK per row, or BatchTopK's learned threshold (per-row top-k until a
    /// threshold has been learned).
    pub fn encode(&self, x: &Tensor) -> SparseCodes {
        let (pre, xc) = self.pre_acts(x);
        let codes = match &self.threshold {
            Some(t) => {
                let kept = &pre * pre.gt_tensor(t).to_kind(pre.kind());
                SparseCodes::from_dense(&kept)
            }
            None => {
                let (val, idx) = largest_per_row(&pre, self.k);
                SparseCodes::from_topk(&idx, &val, self.n_latents())
            }
        };
        self.exact_values(codes, &xc)
    }

    /// The reconstruction [B, d_in] of `codes`: Σ_j f_j W_dec[j] + b_dec.
    pub fn decode(&self, codes: &SparseCodes) -> Tensor {
        codes.combine(&self.w_dec) + &self.b_dec
    }

    /// Gradients of a loss through `codes` given its gradient at the decoder's output
    /// (without b_dec): into W_dec, the selected values, then the encoder and b_dec.
    fn backward_through(&self, codes: &SparseCodes, xc: &Tensor, g_out: &Tensor) -> Grads {
        let g_vals = codes.dot_rows(&self.w_dec, g_out);
        let w_dec = codes.scatter_outer(g_out, &codes.vals);
        // The selected values are post-ReLU: a zero one passed no gradient.
        let g_pre = g_vals * codes.vals.gt(0.0).to_kind(Kind::Float);
        let w_enc = codes.scatter_outer(xc, &g_pre);
        let b_enc = codes.scatter_sum(&g_pre);
        // pre depends on b_dec through x − b_dec.
        let b_dec = -codes
            .combine_with(&self.w_enc, &g_pre)
            .sum_dim_intlist(0, false, Kind::Float);
        Grads {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
        }
    }

    /// One training forward and backward on x [B, d]. `dead` marks latents that have not fired
    /// for the dead threshold; with `aux`, they learn to predict the residual error.
    pub fn train_step(&self, x: &Tensor, dead: Option<&Tensor>, aux: Option<AuxK>) -> Step {
        let (pre, xc) = self.pre_acts(x);
        let codes = self.select(&pre, &xc);
        let recon = self.decode(&codes);
        let total_var = centred_sq_sum(x);
        let err = &recon - x;
        let fvu = err.square().sum(err.kind()).double_value(&[]) / total_var;
        let g = &err * (2.0 / total_var);
        let mut grads = self.backward_through(&codes, &xc, &g);
        grads.b_dec += g.sum_dim_intlist(0, false, Kind::Float);

        let mut aux_loss = 0.0;
        if let (Some(dead), Some(aux)) = (dead, aux) {
            let n_dead = dead.sum(Kind::Int64).int64_value(&[]) as usize;
            let k_aux = aux.k_aux.min(n_dead);
            if k_aux > 0 {
                let masked = pre.masked_fill(&dead.logical_not(), f64::NEG_INFINITY);
                let (val, idx) = largest_per_row(&masked, k_aux);
                let val = val.clamp_min(0.0);
                let aux_codes =
                    self.exact_values(SparseCodes::from_topk(&idx, &val, self.n_latents()), &xc);
                let e = -&err; // x − x̂, detached by construction
                let e_hat = aux_codes.combine(&self.w_dec);
                let e_var = centred_sq_sum(&e).max(1e-12);
                let diff = &e_hat - &e;
                aux_loss = diff.square().sum(Kind::Float).double_value(&[]) / e_var;
                let g_aux = diff * (2.0 * aux.coefficient / e_var);
                let ga = self.backward_through(&aux_codes, &xc, &g_aux);
                grads.w_enc += ga.w_enc;
                grads.b_enc += ga.b_enc;
                grads.w_dec += ga.w_dec;
                grads.b_dec += ga.b_dec;
            }
        }
        let min_selected = (self.selection == Selection::BatchTopK)
            .then(|| {
                let pos = codes.vals.masked_select(&codes.vals.gt(0.0));
                (pos.numel() > 0).then(|| pos.min().double_value(&[]))
            })
            .flatten();
        Step {
            grads,
            codes,
            recon,
            fvu,
            aux: aux_loss,
            min_selected,
        }
    }
}

/// Values and columns of each row's k largest entries: saescope's own one-pass kernel on the
/// CPU (the leftmost kept among ties), libtorch's topk elsewhere.
fn largest_per_row(pre: &Tensor, k: usize) -> (Tensor, Tensor) {
    row_topk(pre, k).unwrap_or_else(|| pre.topk(k as i64, 1, true, false))
}

/// Σ_b ‖x_b − mean(x)‖²: the batch's total variance about its mean (FVU's denominator).
pub fn centred_sq_sum(x: &Tensor) -> f64 {
    let mean = x.mean_dim(0, true, x.kind());
    (x - mean).square().sum(x.kind()).double_value(&[])
}

/// Removes from each row of `grad` its component along the matching (unit-norm) row of
/// `atoms`, so a gradient step does not change the atoms' norms to first order.
pub fn project_out_parallel(grad: &mut Tensor, atoms: &Tensor) {
    let along = (&*grad * atoms).sum_dim_intlist(1, true, Kind::Float);
    *grad -= along * atoms;
}

/// Scales each row to unit L2 norm (rows of zero norm stay zero).
pub fn normalize_rows_(atoms: &mut Tensor) {
    let norms = atoms.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12);
    let _ = atoms.g_div_(&norms);
}
