//! GBA: a ReLU SAE trained on reconstruction alone, made sparse by group bias adaptation
//! (Chen et al. 2025). Latents are split into groups, each with a target activation frequency
//! (geometrically spaced from `highest` to `lowest`); after every buffer of tokens each
//! latent's encoder bias moves toward its group's frequency:
//!   p̂_m > p_k   (fires too often):  b_m ← max(b_m − γ₋ · r_m, −bias_clamp)
//!   p̂_m < ε     (dead):             b_m ← min(b_m + γ₊ · r̄_k, 0)
//! where r_m is the latent's largest pre-activation in the buffer (clamped at 0) and r̄_k the
//! mean of the positive maxima in its group. No public code of the paper exists; the rule and
//! its constants follow the best available reconstruction and are all configurable.
//!
//!   u = (x − b_dec) Wᵀ,   x̂ = f W + b_dec   (tied W with unit-norm rows, as in the paper's
//!   setting: an untied encoder could grow and outvote the lowered biases)
//!   JumpReLU (default):  f = u · 1[u + b_enc > 0]     the bias only gates, as in the paper's
//!                                                     LLM experiments
//!   ReLU:                f = relu(u + b_enc)          the bias also shrinks every value, which a
//!                                                     unit-norm tied decoder cannot undo

use crate::loss::Fvu;
use saescope_kernels::linear;
use tch::{Kind, Tensor};

/// The bias-adaptation rule's constants.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BiasRule {
    /// Number of groups.
    pub groups: usize,
    /// Target frequency of the first group.
    pub highest: f64,
    /// Target frequency of the last group.
    pub lowest: f64,
    /// Step size when a latent fires too often (γ₋).
    pub gamma_down: f64,
    /// Step size when a latent is dead (γ₊).
    pub gamma_up: f64,
    /// Frequency under which a latent counts as dead (ε).
    pub dead_below: f64,
    /// Biases never go below −bias_clamp. In the scaled units the trainer uses (mean input norm
    /// sqrt(d_in), about 1 along a random direction) 4 lets a latent ignore noise yet fire on
    /// its feature; the reconstruction this rule comes from clamps at 1 on its own scale.
    pub bias_clamp: f64,
    /// Tokens per adaptation buffer.
    pub buffer_tokens: usize,
    /// Gate with the bias (JumpReLU, true) or add it (ReLU, false). Saved as SAELens
    /// `jumprelu` (threshold = −b_enc) or `standard`.
    pub jump: bool,
}

impl Default for BiasRule {
    fn default() -> Self {
        BiasRule {
            groups: 10,
            highest: 0.1,
            lowest: 0.001,
            gamma_down: 0.01,
            gamma_up: 0.01,
            dead_below: 1e-6,
            bias_clamp: 4.0,
            buffer_tokens: 40_960,
            jump: true,
        }
    }
}

impl BiasRule {
    /// Target frequency of each group, geometric from `highest` to `lowest`.
    pub fn targets(&self) -> Vec<f64> {
        let g = self.groups.max(1);
        (0..g)
            .map(|i| {
                let t = if g == 1 {
                    0.0
                } else {
                    i as f64 / (g - 1) as f64
                };
                self.highest * (self.lowest / self.highest).powf(t)
            })
            .collect()
    }
}

/// A tied SAE made sparse by group bias adaptation (see the module docs); rows are latents.
#[derive(Debug)]
pub struct GbaSae {
    /// Encoder weights [n, d_in]; the same tensor as `w_dec` while training (tied).
    pub w_enc: Tensor,
    /// Encoder bias [n]: starts at 0 and is moved only by the bias rule, never by a gradient.
    pub b_enc: Tensor,
    /// Decoder atoms [n, d_in], unit-norm rows during training.
    pub w_dec: Tensor,
    /// Decoder bias [d_in]: subtracted from the input before encoding, added back after.
    pub b_dec: Tensor,
    /// Group of each latent, i64 [n].
    pub group: Tensor,
    /// Target frequency of each latent, f32 [n].
    pub target: Tensor,
    /// JumpReLU (the bias gates) rather than ReLU (the bias is added).
    pub jump: bool,
}

/// Firing counts and maximal pre-activations over the current buffer.
#[derive(Debug)]
pub struct BufferStats {
    /// Tokens on which each latent's gated pre-activation u + b_enc was positive, f32 [n].
    pub fired: Tensor,
    /// Largest gated pre-activation of each latent in the buffer, f32 [n]; starts at 0.
    pub max_pre: Tensor,
    /// Tokens seen since the buffer was last cleared.
    pub tokens: usize,
}

impl BufferStats {
    /// Empty statistics for `n` latents on `device`.
    pub fn new(n: usize, device: tch::Device) -> Self {
        BufferStats {
            fired: Tensor::zeros([n as i64], (Kind::Float, device)),
            max_pre: Tensor::zeros([n as i64], (Kind::Float, device)),
            tokens: 0,
        }
    }
}

/// What one GBA training forward and backward produced; gradients are of the FVU.
pub struct Step {
    /// Gradient for `w_enc`, [n, d_in]; a tied trainer adds it to the decoder's.
    pub w_enc: Tensor,
    /// Gradient for `w_dec`, [n, d_in].
    pub w_dec: Tensor,
    /// Gradient for `b_dec`, [d_in], through both the input's centring and the decoder.
    pub b_dec: Tensor,
    /// The activations f [B, n], dense.
    pub acts: Tensor,
    /// The reconstruction x̂ [B, d_in], b_dec included.
    pub recon: Tensor,
    /// Σ‖x̂ − x‖² / Σ‖x − mean(x)‖² over the batch, the loss: an f64 scalar tensor on the
    /// batch's device ([`crate::loss`]).
    pub fvu: Tensor,
}

impl GbaSae {
    /// Number of latents n (rows of `w_enc`).
    pub fn n_latents(&self) -> usize {
        self.w_enc.size()[0] as usize
    }

    /// The gated pre-activation u + b_enc (what the bias rule measures), the activations, and
    /// the centred input.
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let xc = x - &self.b_dec;
        let u = linear(&xc, &self.w_enc);
        let pre = &u + &self.b_enc;
        let acts = if self.jump {
            u * pre.gt(0.0).to_kind(Kind::Float)
        } else {
            pre.relu()
        };
        (pre, acts, xc)
    }

    /// The activations f [B, n] of x [B, d_in], dense (mostly zeros).
    pub fn encode_dense(&self, x: &Tensor) -> Tensor {
        self.forward(x).1
    }

    /// Forward and backward of the reconstruction loss Σ‖x̂ − x‖² / Σ‖x − mean(x)‖². The
    /// encoder bias gets no gradient: only the adaptation rule moves it. Updates `stats`. The
    /// gradients of the encoder and decoder matrices are returned apart; a tied trainer adds them.
    pub fn train_step(&self, x: &Tensor, stats: &mut BufferStats) -> Step {
        let (pre, acts, xc) = self.forward(x);
        let _ = stats
            .fired
            .g_add_(&pre.gt(0.0).sum_dim_intlist(0, false, Kind::Float));
        stats.max_pre = stats.max_pre.maximum(&pre.amax(0, false));
        stats.tokens += x.size()[0] as usize;
        let recon = acts.matmul(&self.w_dec) + &self.b_dec;
        let err = &recon - x;
        let fvu = Fvu::of(&err, x);
        let g = err * &fvu.grad_scale;
        let w_dec = acts.tr().matmul(&g);
        let g_pre = g.matmul(&self.w_dec.tr()) * pre.gt(0.0).to_kind(Kind::Float);
        let w_enc = g_pre.tr().matmul(&xc);
        let b_dec = g.sum_dim_intlist(0, false, Kind::Float)
            - g_pre
                .matmul(&self.w_enc)
                .sum_dim_intlist(0, false, Kind::Float);
        Step {
            w_enc,
            w_dec,
            b_dec,
            acts,
            recon,
            fvu: fvu.value,
        }
    }

    /// Applies the bias rule from a full buffer's statistics and clears them.
    pub fn adapt_biases(&mut self, stats: &mut BufferStats, rule: &BiasRule) {
        let freq = &stats.fired / stats.tokens.max(1) as f64;
        let r = stats.max_pre.clamp_min(0.0);
        // r̄_k: mean of the positive maxima within each group.
        let groups = rule.groups.max(1) as i64;
        let positive = r.gt(0.0).to_kind(Kind::Float);
        let sums = Tensor::zeros([groups], (Kind::Float, r.device())).index_add(0, &self.group, &r);
        let counts =
            Tensor::zeros([groups], (Kind::Float, r.device())).index_add(0, &self.group, &positive);
        let r_bar = (sums / counts.clamp_min(1.0)).index_select(0, &self.group);
        let too_often = freq.gt_tensor(&self.target);
        let dead = freq.lt(rule.dead_below);
        let lowered = (&self.b_enc - &r * rule.gamma_down).clamp_min(-rule.bias_clamp);
        let raised = (&self.b_enc + r_bar * rule.gamma_up).clamp_max(0.0);
        self.b_enc = lowered.where_self(&too_often, &raised.where_self(&dead, &self.b_enc));
        *stats = BufferStats::new(self.n_latents(), r.device());
    }
}
