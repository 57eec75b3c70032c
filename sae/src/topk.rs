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

use crate::loss::{Fvu, centred_sq_sum, grad_scale, sq_sum};
use crate::sparse::SparseCodes;
use saescope_kernels::{affine, batch_topk, row_topk};
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

/// What one training forward and backward produced. The figures are scalar tensors on the
/// batch's device (see [`crate::loss`]): reading one on a GPU waits for the step to finish.
pub struct Step {
    /// Gradients of the loss FVU + coefficient · AuxK loss.
    pub grads: Grads,
    /// The training selection's codes for the batch.
    pub codes: SparseCodes,
    /// The reconstruction x̂ [B, d_in], b_dec included.
    pub recon: Tensor,
    /// Σ‖x̂ − x‖² / Σ‖x − mean(x)‖² over the batch (f64).
    pub fvu: Tensor,
    /// The AuxK loss before its coefficient (f64; 0 without dead latents).
    pub aux: Tensor,
    /// BatchTopK: the smallest selected positive value (f64; +∞ when none was positive), the
    /// threshold's sample.
    pub min_selected: Option<Tensor>,
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
        let s = self.scores(x);
        (with_bias(&s.scores, s.bias.as_ref()).relu(), s.xc)
    }

    /// What the selection ranks: the encoder's product, before any ReLU (a selected negative
    /// value becomes a zero that carries no gradient, so the pass over all B x n entries that a
    /// ReLU costs is saved). With `bf16_select` the product is bf16 and b_enc is left to the
    /// selection, which adds it in f32 as it compares: the matmul then writes its output once.
    fn scores(&self, x: &Tensor) -> Scores {
        let xc = x - &self.b_dec;
        if self.bf16_select {
            let h = |t: &Tensor| t.to_kind(Kind::BFloat16);
            Scores {
                scores: h(&xc).matmul(&h(&self.w_enc).tr()),
                bias: Some(self.b_enc.shallow_clone()),
                xc,
            }
        } else {
            Scores {
                scores: affine(&xc, &self.w_enc, &self.b_enc),
                bias: None,
                xc,
            }
        }
    }

    /// With `bf16_select`, the codes' values recomputed in f32 from the chosen latents:
    /// relu(xc · W_enc[j] + b_enc[j]).
    pub fn exact_values(&self, codes: SparseCodes, xc: &Tensor) -> SparseCodes {
        if !self.bf16_select {
            return codes;
        }
        let vals =
            (codes.dot_rows(&self.w_enc, xc) + self.b_enc.index_select(0, &codes.cols)).relu_();
        SparseCodes { vals, ..codes }
    }

    /// The training-time selection from [`TopKSae::pre_acts`]' output: per row (TopK) or over
    /// the whole batch (BatchTopK).
    pub fn select(&self, pre: &Tensor, xc: &Tensor) -> SparseCodes {
        let codes = self.select_from(pre, None);
        self.exact_values(codes, xc)
    }

    /// The selection from scores (plus `bias` [n], when given), with values ReLU'd; BatchTopK
    /// keeps only positive entries.
    fn select_from(&self, scores: &Tensor, bias: Option<&Tensor>) -> SparseCodes {
        let n = self.n_latents();
        let (rows, _) = scores.size2().expect("2-D");
        match self.selection {
            Selection::TopK => {
                let (val, idx) = largest_per_row(scores, bias, self.k);
                SparseCodes::from_topk(&idx, &val.clamp_min(0.0), n)
            }
            Selection::BatchTopK => {
                let keep = (self.k as i64 * rows).min(scores.numel() as i64) as usize;
                match batch_topk(scores, bias, keep) {
                    // The kernel runs only on the CPU, where its tensors are made.
                    Some(s) => SparseCodes {
                        offsets: s.offsets,
                        cols: s.cols,
                        vals: s.vals,
                        rows: rows as usize,
                        n_latents: n,
                    },
                    None => batch_topk_flat(&with_bias(scores, bias).relu(), keep),
                }
            }
        }
    }

    /// Inference codes: TopK per row, or BatchTopK's learned threshold (per-row top-k until a
    /// threshold has been learned).
    pub fn encode(&self, x: &Tensor) -> SparseCodes {
        if let Some(t) = &self.threshold {
            let (pre, xc) = self.pre_acts(x);
            let kept = &pre * pre.gt_tensor(t).to_kind(pre.kind());
            return self.exact_values(SparseCodes::from_dense(&kept), &xc);
        }
        let s = self.scores(x);
        let (val, idx) = largest_per_row(&s.scores, s.bias.as_ref(), self.k);
        let codes = SparseCodes::from_topk(&idx, &val.clamp_min(0.0), self.n_latents());
        self.exact_values(codes, &s.xc)
    }

    /// The reconstruction [B, d_in] of `codes`: Σ_j f_j W_dec[j] + b_dec.
    pub fn decode(&self, codes: &SparseCodes) -> Tensor {
        codes.combine(&self.w_dec) + &self.b_dec
    }

    /// Gradients of a loss through `codes` given its gradient at the decoder's output
    /// (without b_dec): into W_dec, the selected values, then the encoder and b_dec.
    pub fn backward_through(&self, codes: &SparseCodes, xc: &Tensor, g_out: &Tensor) -> Grads {
        let g_vals = codes.dot_rows(&self.w_dec, g_out);
        let w_dec = codes.scatter_outer(g_out, &codes.vals);
        // The selected values are post-ReLU: a zero one passed no gradient.
        let g_pre = g_vals * codes.vals.gt(0.0).to_kind(Kind::Float);
        let w_enc = codes.scatter_outer(xc, &g_pre);
        let b_enc = codes.scatter_sum(&g_pre);
        // pre depends on b_dec through x − b_dec: −Σ_entries g_pre · W_enc[col], which sums
        // each latent's gradients first (b_enc's) and so costs one product with W_enc.
        let b_dec = -self.w_enc.tr().mv(&b_enc);
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
        let Scores { scores, bias, xc } = self.scores(x);
        let codes = self.exact_values(self.select_from(&scores, bias.as_ref()), &xc);
        let recon = self.decode(&codes);
        let err = &recon - x;
        let fvu = Fvu::of(&err, x);
        let g = &err * &fvu.grad_scale;
        let mut grads = self.backward_through(&codes, &xc, &g);
        grads.b_dec += g.sum_dim_intlist(0, false, Kind::Float);

        let mut aux_loss = Tensor::zeros([], (Kind::Double, x.device()));
        // How many latents are dead is read here (a wait on a GPU), as the number chosen
        // depends on it; the trainer passes `dead` only once a latent can have died.
        let n_dead = |d: &Tensor| d.sum(Kind::Int64).int64_value(&[]) as usize;
        if let (Some(dead), Some(aux)) = (dead, aux)
            && let k_aux = aux.k_aux.min(n_dead(dead))
            && k_aux > 0
        {
            // Only dead latents compete: the others' bias is −∞.
            let zero = || Tensor::zeros([self.n_latents() as i64], (Kind::Float, x.device()));
            let masked = bias
                .unwrap_or_else(zero)
                .masked_fill(&dead.logical_not(), f64::NEG_INFINITY);
            let (val, idx) = largest_per_row(&scores, Some(&masked), k_aux);
            let val = val.clamp_min(0.0);
            let aux_codes =
                self.exact_values(SparseCodes::from_topk(&idx, &val, self.n_latents()), &xc);
            let e = -&err; // x − x̂, detached by construction
            let e_hat = aux_codes.combine(&self.w_dec);
            let e_var = centred_sq_sum(&e).clamp_min(1e-12);
            let diff = &e_hat - &e;
            aux_loss = sq_sum(&diff) / &e_var;
            let g_aux = &diff * grad_scale(&e_var, 2.0 * aux.coefficient, diff.kind());
            let ga = self.backward_through(&aux_codes, &xc, &g_aux);
            grads.w_enc += ga.w_enc;
            grads.b_enc += ga.b_enc;
            grads.w_dec += ga.w_dec;
            grads.b_dec += ga.b_dec;
        }
        let min_selected =
            (self.selection == Selection::BatchTopK && codes.vals.numel() > 0).then(|| {
                let v = &codes.vals;
                v.masked_fill(&v.le(0.0), f64::INFINITY)
                    .min()
                    .to_kind(Kind::Double)
            });
        Step {
            grads,
            codes,
            recon,
            fvu: fvu.value,
            aux: aux_loss,
            min_selected,
        }
    }
}

/// The scores and what the selection still has to add to them.
struct Scores {
    /// The encoder's product [B, n], b_enc included unless `bias` holds it.
    scores: Tensor,
    /// b_enc [n] when the selection adds it.
    bias: Option<Tensor>,
    /// The centred input x − b_dec.
    xc: Tensor,
}

/// scores + bias, in the scores' kind.
fn with_bias(scores: &Tensor, bias: Option<&Tensor>) -> Tensor {
    match bias {
        Some(b) => scores + b.to_kind(scores.kind()),
        None => scores.shallow_clone(),
    }
}

/// Values and columns of each row's k largest entries of scores + bias: saescope's own one-pass
/// kernel on the CPU (the leftmost kept among ties), libtorch's topk elsewhere.
fn largest_per_row(scores: &Tensor, bias: Option<&Tensor>, k: usize) -> (Tensor, Tensor) {
    row_topk(scores, bias, k)
        .unwrap_or_else(|| with_bias(scores, bias).topk(k as i64, 1, true, false))
}

/// BatchTopK's selection where the own kernel does not run (a GPU): libtorch's flat topk of the
/// ReLU'd pre-activations, sorted back into row-major order, zeros dropped (as the kernel keeps
/// only positive entries).
fn batch_topk_flat(pre: &Tensor, keep: usize) -> SparseCodes {
    let (rows, n) = pre.size2().expect("2-D");
    let flat_pre = pre.reshape([-1]);
    let (top, flat) = flat_pre.topk(keep as i64, 0, true, false);
    let flat = flat.masked_select(&top.gt(0.0));
    // Row-major order groups the entries by row.
    let flat = flat.sort(0, false).0;
    let (r, c) = (flat.divide_scalar_mode(n, "floor"), flat.remainder(n));
    let vals = flat_pre.index_select(0, &flat);
    SparseCodes::from_entries(&r, c, vals, rows, n)
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
