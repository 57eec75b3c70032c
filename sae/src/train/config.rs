//! Every training setting, with its documented default: [`TrainConfig`] is what `--config
//! FILE.toml` holds and what a dictionary's `cfg.json` records under `saescope.config`.

use crate::error::{Result, SaeError};
use crate::gba::BiasRule;
use crate::snmf::SnmfConfig;
use serde::{Deserialize, Serialize};

/// The learner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// TopK SAE: the k largest pre-activations per token (Gao et al.).
    TopK,
    /// BatchTopK SAE: the k × batch largest over the batch, a threshold at inference.
    BatchTopK,
    /// MP-SAE: matching pursuit over tied unit atoms (Costa et al.).
    MpSae,
    /// GBA: group bias adaptation toward target firing frequencies.
    Gba,
    /// Semi-nonnegative matrix factorisation.
    Snmf,
}

impl Method {
    /// The method's name, as `--method` takes it and dictionary directories are named.
    pub fn name(self) -> &'static str {
        match self {
            Method::TopK => "topk",
            Method::BatchTopK => "batchtopk",
            Method::MpSae => "mpsae",
            Method::Gba => "gba",
            Method::Snmf => "snmf",
        }
    }
}

/// A method name that is not one of saescope's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown method `{0}` (topk, batchtopk, mpsae, gba, snmf)")]
pub struct UnknownMethod(pub String);

impl std::str::FromStr for Method {
    type Err = UnknownMethod;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownMethod> {
        Ok(match s {
            "topk" => Method::TopK,
            "batchtopk" => Method::BatchTopK,
            "mpsae" | "mp" => Method::MpSae,
            "gba" => Method::Gba,
            "snmf" => Method::Snmf,
            _ => return Err(UnknownMethod(s.to_owned())),
        })
    }
}

/// Every training setting, with its default. Written to the dictionary's `cfg.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The learner: `topk`, `batchtopk`, `mpsae`, `gba` or `snmf` (default `topk`).
    pub method: Method,
    /// Number of latents (features). 0: 8 × d_in.
    pub latents: usize,
    /// Active latents per token (TopK), mean per token (BatchTopK), pursuit steps (MP-SAE).
    pub k: usize,
    /// Tokens per step.
    pub batch_tokens: usize,
    /// Training tokens in all. 0: one pass over the training shards.
    pub tokens: u64,
    /// Adam learning rate. None: 2e-4 / sqrt(latents / 2^14) (the 1/sqrt(n) rule of Gao et al.,
    /// as sparsify and dictionary_learning use it).
    pub lr: Option<f64>,
    /// Linear warm-up steps (capped at a tenth of the run); then linear decay to 0 (sparsify's
    /// schedule).
    pub warmup_steps: usize,
    /// Adam's first-moment decay (0.9).
    pub beta1: f64,
    /// Adam's second-moment decay (0.999).
    pub beta2: f64,
    /// Adam's ε, added to √v̂ in the update's denominator (1e-8).
    pub eps: f64,
    /// Clip the joint gradient norm to this (0: off).
    pub grad_clip: f64,
    /// AuxK: dead latents used to model the residual. None: d_in / 2. 0 turns AuxK off.
    pub aux_k: Option<usize>,
    /// AuxK loss coefficient (1/32, as OpenAI's and dictionary_learning's). The aux loss is
    /// normalised by the residual's variance and decodes without b_dec.
    pub aux_coefficient: f64,
    /// A latent is dead after this many training tokens without firing.
    pub dead_tokens: u64,
    /// BatchTopK: threshold ← β·threshold + (1 − β)·(smallest selected value), from this step.
    pub threshold_beta: f64,
    /// BatchTopK: the step from which the threshold is learned (1000).
    pub threshold_start_step: usize,
    /// Divide inputs by a fixed scale s = mean‖x‖ / sqrt(d_in) (estimated on the first
    /// `init_tokens`), so the learner sees a mean norm of sqrt(d_in) whatever the hook; folded
    /// into the saved weights (W_enc / s, W_dec · s, b_dec · s), which then read raw activations.
    pub normalize_input: bool,
    /// Drop BOS positions from training and evaluation.
    pub exclude_bos: bool,
    /// Tokens used to estimate the scale and the geometric median that initialises b_dec.
    pub init_tokens: usize,
    /// Fraction of shards held out for the final metrics.
    pub heldout_fraction: f64,
    /// Held-out tokens evaluated at the end (at least 1M where the run has them).
    pub eval_tokens: u64,
    /// Seed of the initial weights, GBA's groups, SNMF's start and the shuffle order (0).
    pub seed: u64,
    /// Steps between lines of `metrics.jsonl`; the last step is always written (50).
    pub log_every: usize,
    /// Steps between resumable checkpoints of a gradient learner (500; 0: none).
    pub checkpoint_every: usize,
    /// Rows in the reader's shuffle buffer (0: read in order).
    pub shuffle_buffer: usize,
    /// MP-SAE at inference: stop a token once ‖residual‖ falls below this (input units) or after
    /// `mp_max_steps`. None: no early stop, every token takes all its steps. Saved as SAELens'
    /// `residual_threshold` (0 for None).
    pub mp_residual_threshold: Option<f64>,
    /// MP-SAE at inference: most steps per token. None: d_in with a residual threshold, else k.
    pub mp_max_steps: Option<usize>,
    /// Choose latents with bf16 arithmetic during training: TopK's and BatchTopK's encoder
    /// matmul, MP-SAE's Gram matrix. Only the choice is made in bf16; every value that enters
    /// the reconstruction or a gradient is recomputed in f32, so a choice can differ from the
    /// f32 one only between near-ties. About 1.4x faster TopK steps on a CPU with AVX-512 BF16.
    /// None: on for CUDA and for CPUs with native bf16, off otherwise. Saved dictionaries
    /// always encode in f32.
    pub bf16_select: Option<bool>,
    /// GBA's bias-adaptation rule, the `[gba]` table (defaults in [`BiasRule`]).
    pub gba: BiasRule,
    /// SNMF's solver settings, the `[snmf]` table (defaults in [`SnmfConfig`]).
    pub snmf: SnmfConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            method: Method::TopK,
            latents: 0,
            k: 32,
            batch_tokens: 4096,
            tokens: 0,
            lr: None,
            warmup_steps: 1000,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: 1.0,
            aux_k: None,
            aux_coefficient: 1.0 / 32.0,
            dead_tokens: 10_000_000,
            threshold_beta: 0.999,
            threshold_start_step: 1000,
            normalize_input: true,
            exclude_bos: true,
            init_tokens: 32_768,
            heldout_fraction: 0.1,
            eval_tokens: 1_000_000,
            seed: 0,
            log_every: 50,
            checkpoint_every: 500,
            shuffle_buffer: 1 << 18,
            mp_residual_threshold: None,
            mp_max_steps: None,
            bf16_select: None,
            gba: BiasRule::default(),
            snmf: SnmfConfig::default(),
        }
    }
}

impl TrainConfig {
    /// The number of latents for inputs of width `d_in`: `latents`, or 8 × d_in when it is 0.
    pub fn latents_for(&self, d_in: usize) -> usize {
        if self.latents == 0 {
            8 * d_in
        } else {
            self.latents
        }
    }

    /// Adam's base learning rate for `n` latents: `lr`, or 2e-4 / sqrt(n / 2^14) when None.
    pub fn lr_for(&self, n: usize) -> f64 {
        self.lr.unwrap_or(2e-4 / (n as f64 / 16384.0).sqrt())
    }

    /// Checks the settings for inputs of width `d_in`: a [`SaeError::Config`] names a bad one.
    pub fn validate(&self, d_in: usize) -> Result<()> {
        let n = self.latents_for(d_in);
        let bad = |m: String| Err(SaeError::Config(m));
        if self.batch_tokens == 0 {
            return bad("batch_tokens must be positive".into());
        }
        if matches!(
            self.method,
            Method::TopK | Method::BatchTopK | Method::MpSae
        ) && (self.k == 0 || self.k > n)
        {
            return bad(format!(
                "k = {} must be between 1 and the number of latents ({n})",
                self.k
            ));
        }
        if !(0.0..1.0).contains(&self.heldout_fraction) {
            return bad(format!(
                "heldout_fraction = {} must be in [0, 1)",
                self.heldout_fraction
            ));
        }
        if self.gba.groups == 0 || self.gba.buffer_tokens == 0 {
            return bad("gba.groups and gba.buffer_tokens must be positive".into());
        }
        Ok(())
    }
}
