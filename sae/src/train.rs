//! The training loop shared by the gradient-trained learners (TopK, BatchTopK, MP-SAE, GBA),
//! small enough to read in one sitting, and SNMF's alternating solver behind the same output.
//!
//! Each step: a batch from the [`Batcher`], scaled by the input scale; the learner's forward
//! and hand-written backward; gradient projection against the unit-norm decoder rows; global
//! gradient clipping; Adam with linear warm-up then linear decay to zero; decoder rows
//! renormalised. Every `checkpoint_every` steps the whole state (weights, Adam moments, dead
//! counters, thresholds, data position) goes to `checkpoint.safetensors` atomically, so a killed
//! run resumed with `resume` reaches the same weights as an uninterrupted one.

use crate::adam::{Adam, clip_grad_norm};
use crate::data::{Batcher, Source};
use crate::dictionary::{
    AnyDictionary, Dictionary, MpDictionary, SnmfDictionary, read_safetensors_with_metadata,
    serialize,
};
use crate::error::{Result, SaeError};
use crate::gba::{BiasRule, BufferStats, GbaSae};
use crate::metrics::{Accumulator, Metrics};
use crate::mpsae::{MpSae, Stop};
use crate::seeded::Seeded;
use crate::snmf::{Snmf, SnmfConfig, full_batch_bytes};
use crate::topk::{AuxK, Selection, TopKSae, normalize_rows_, project_out_parallel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    TopK,
    BatchTopK,
    MpSae,
    Gba,
    Snmf,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "topk" => Method::TopK,
            "batchtopk" => Method::BatchTopK,
            "mpsae" | "mp" => Method::MpSae,
            "gba" => Method::Gba,
            "snmf" => Method::Snmf,
            _ => {
                return Err(format!(
                    "unknown method `{s}` (topk, batchtopk, mpsae, gba, snmf)"
                ));
            }
        })
    }
}

/// Every training setting, with its default. Written to the dictionary's `cfg.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
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
    pub beta1: f64,
    pub beta2: f64,
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
    pub seed: u64,
    pub log_every: usize,
    pub checkpoint_every: usize,
    /// Rows in the reader's shuffle buffer (0: read in order).
    pub shuffle_buffer: usize,
    /// MP-SAE at inference: stop a token once ‖residual‖ falls below this (input units) or after
    /// `mp_max_steps`. None: exactly k steps.
    pub mp_residual_threshold: Option<f64>,
    pub mp_max_steps: Option<usize>,
    /// Choose latents with bf16 arithmetic during training: TopK's and BatchTopK's encoder
    /// matmul, MP-SAE's Gram matrix. Only the choice is made in bf16; every value that enters
    /// the reconstruction or a gradient is recomputed in f32, so a choice can differ from the
    /// f32 one only between near-ties. About 1.4x faster TopK steps on a CPU with AVX-512 BF16.
    /// None: on for CUDA and for CPUs with native bf16, off otherwise. Saved dictionaries
    /// always encode in f32.
    pub bf16_select: Option<bool>,
    pub gba: BiasRule,
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
    pub fn latents_for(&self, d_in: usize) -> usize {
        if self.latents == 0 {
            8 * d_in
        } else {
            self.latents
        }
    }

    pub fn lr_for(&self, n: usize) -> f64 {
        self.lr.unwrap_or(2e-4 / (n as f64 / 16384.0).sqrt())
    }

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

/// One logged step (also a line of `metrics.jsonl`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogLine {
    pub step: u64,
    pub tokens: u64,
    pub lr: f64,
    pub loss: f64,
    pub fvu: f64,
    pub aux_loss: f64,
    pub l0: f64,
    pub dead_fraction: f64,
    pub grad_norm: f64,
}

/// What the learners share: the input scale and where training stands.
struct Progress {
    step: u64,
    epoch: u64,
    in_epoch: u64,
    tokens: u64,
    scale: f64,
}

/// A gradient learner's whole mutable state.
enum Learner {
    TopK {
        sae: TopKSae,
        adam: Adam,
        since_fired: Tensor,
        threshold: Option<f64>,
    },
    Mp {
        sae: MpSae,
        adam: Adam,
        since_fired: Tensor,
    },
    Gba {
        sae: GbaSae,
        adam: Adam,
        stats: BufferStats,
        since_fired: Tensor,
    },
}

/// Weiszfeld's iterations for the geometric median of the rows of x [N, d].
pub fn geometric_median(x: &Tensor, iters: usize, tol: f64) -> Tensor {
    let mut m = x.mean_dim(0, false, Kind::Float);
    for _ in 0..iters {
        let w = (x - &m)
            .norm_scalaropt_dim(2.0, [1], false)
            .clamp_min(1e-8)
            .reciprocal();
        let next = (x * w.unsqueeze(1)).sum_dim_intlist(0, false, Kind::Float) / w.sum(Kind::Float);
        let moved = (&next - &m).norm().double_value(&[]);
        m = next;
        if moved < tol * m.norm().double_value(&[]).max(1e-12) {
            break;
        }
    }
    m
}

fn to_tensor(rows: &[f32], dim: usize, device: Device) -> Tensor {
    Tensor::from_slice(rows)
        .view([-1, dim as i64])
        .to_device(device)
}

/// The update every gradient learner shares: remove from the atoms' gradient (`grads[atoms]`)
/// its component along each atom, clip the joint gradient norm, take an Adam step, and put the
/// atoms back on the unit sphere. Returns the gradient norm before clipping.
pub fn constrained_step(
    adam: &mut Adam,
    params: &mut [&mut Tensor],
    mut grads: Vec<Tensor>,
    atoms: usize,
    grad_clip: f64,
    lr: f64,
) -> f64 {
    project_out_parallel(&mut grads[atoms], params[atoms]);
    let norm = clip_grad_norm(&mut grads, grad_clip);
    adam.step(params, &grads, lr);
    normalize_rows_(params[atoms]);
    norm
}

/// Whether bf16 matmuls run natively (faster than f32) on `device`.
pub fn native_bf16(device: Device) -> bool {
    match device {
        Device::Cpu => {
            #[cfg(target_arch = "x86_64")]
            {
                std::arch::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        }
        _ => true,
    }
}

impl Learner {
    fn init(cfg: &TrainConfig, d: usize, sample: &Tensor, device: Device) -> Learner {
        let mut rng = Seeded::new(cfg.seed);
        let bf16 = cfg.bf16_select.unwrap_or_else(|| native_bf16(device));
        let n = cfg.latents_for(d) as i64;
        let opts = (Kind::Float, device);
        let b_dec = geometric_median(sample, 100, 1e-5);
        let bound = 1.0 / (d as f64).sqrt();
        let w_enc = rng.uniform(&[n, d as i64], -bound, bound, device);
        let mut w_dec = w_enc.copy();
        normalize_rows_(&mut w_dec);
        let since = Tensor::zeros([n], (Kind::Int64, device));
        let adam = |ps: &[&Tensor]| Adam::new(ps, cfg.beta1, cfg.beta2, cfg.eps);
        match cfg.method {
            Method::TopK | Method::BatchTopK => {
                let sae = TopKSae {
                    w_enc,
                    b_enc: Tensor::zeros([n], opts),
                    w_dec,
                    b_dec,
                    k: cfg.k,
                    selection: if cfg.method == Method::BatchTopK {
                        Selection::BatchTopK
                    } else {
                        Selection::TopK
                    },
                    threshold: None,
                    bf16_select: bf16,
                };
                let adam = adam(&[&sae.w_enc, &sae.b_enc, &sae.w_dec, &sae.b_dec]);
                Learner::TopK {
                    sae,
                    adam,
                    since_fired: since,
                    threshold: None,
                }
            }
            Method::MpSae => {
                let sae = MpSae {
                    atoms: w_dec,
                    b_dec,
                    k: cfg.k,
                    bf16_gram: bf16,
                };
                let adam = adam(&[&sae.atoms, &sae.b_dec]);
                Learner::Mp {
                    sae,
                    adam,
                    since_fired: since,
                }
            }
            Method::Gba => {
                let targets = cfg.gba.targets();
                let groups = cfg.gba.groups as i64;
                // Latents are dealt into groups by a seeded permutation.
                let group = rng.permutation(n as usize, device).remainder(groups);
                let target =
                    Tensor::from_slice(&targets.iter().map(|&t| t as f32).collect::<Vec<_>>())
                        .to_device(device)
                        .index_select(0, &group);
                // Tied, as in the paper: the encoder cannot grow to outvote the lowered biases.
                let sae = GbaSae {
                    w_enc: w_dec.shallow_clone(),
                    b_enc: Tensor::zeros([n], opts),
                    w_dec,
                    b_dec,
                    group,
                    target,
                    jump: cfg.gba.jump,
                };
                let adam = adam(&[&sae.w_dec, &sae.b_dec]);
                Learner::Gba {
                    sae,
                    adam,
                    stats: BufferStats::new(n as usize, device),
                    since_fired: since,
                }
            }
            Method::Snmf => unreachable!("SNMF has its own solver"),
        }
    }

    /// One step on x (already scaled); returns the log figures.
    fn step(&mut self, x: &Tensor, cfg: &TrainConfig, lr: f64, step: u64) -> LogLine {
        let b = x.size()[0];
        let d = x.size()[1] as usize;
        let dead_after = cfg.dead_tokens as i64;
        let fraction = |mask: &Tensor| {
            mask.to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
        };
        let mark_fired = |since: &mut Tensor, fired: &Tensor| {
            let _ = since.g_add_scalar_(b);
            let _ = since.index_fill_(0, fired, 0);
        };
        let code_l0 = |vals: &Tensor| vals.gt(0.0).sum(Kind::Float).double_value(&[]) / b as f64;
        // Each arm: (fvu, aux loss, L0, dead fraction, gradient norm).
        let (fvu, aux, l0, dead_fraction, grad_norm) = match self {
            Learner::TopK {
                sae,
                adam,
                since_fired,
                threshold,
            } => {
                let dead = since_fired.gt(dead_after);
                let aux = match cfg.aux_k {
                    Some(0) => None,
                    k => Some(AuxK {
                        k_aux: k.unwrap_or(d / 2),
                        coefficient: cfg.aux_coefficient,
                    }),
                };
                let s = sae.train_step(x, Some(&dead), aux);
                mark_fired(
                    since_fired,
                    &s.codes.cols.masked_select(&s.codes.vals.gt(0.0)),
                );
                let g = vec![s.grads.w_enc, s.grads.b_enc, s.grads.w_dec, s.grads.b_dec];
                let params = &mut [
                    &mut sae.w_enc,
                    &mut sae.b_enc,
                    &mut sae.w_dec,
                    &mut sae.b_dec,
                ];
                let gn = constrained_step(adam, params, g, 2, cfg.grad_clip, lr);
                if let (Some(m), true) = (s.min_selected, step as usize >= cfg.threshold_start_step)
                {
                    *threshold = Some(match *threshold {
                        None => m,
                        Some(t) => cfg.threshold_beta * t + (1.0 - cfg.threshold_beta) * m,
                    });
                }
                (s.fvu, s.aux, code_l0(&s.codes.vals), fraction(&dead), gn)
            }
            Learner::Mp {
                sae,
                adam,
                since_fired,
            } => {
                let s = sae.train_step(x);
                mark_fired(
                    since_fired,
                    &s.codes.cols.masked_select(&s.codes.vals.gt(0.0)),
                );
                let g = vec![s.atoms_grad, s.b_dec_grad];
                let params = &mut [&mut sae.atoms, &mut sae.b_dec];
                let gn = constrained_step(adam, params, g, 0, cfg.grad_clip, lr);
                let dead = fraction(&since_fired.gt(dead_after));
                (s.fvu, 0.0, code_l0(&s.codes.vals), dead, gn)
            }
            Learner::Gba {
                sae,
                adam,
                stats,
                since_fired,
            } => {
                let s = sae.train_step(x, stats);
                let active = s.acts.gt(0.0);
                mark_fired(since_fired, &active.any_dim(0, false).nonzero().view([-1]));
                let l0 = active.sum(Kind::Float).double_value(&[]) / b as f64;
                let g = vec![s.w_enc + s.w_dec, s.b_dec];
                let gn = constrained_step(
                    adam,
                    &mut [&mut sae.w_dec, &mut sae.b_dec],
                    g,
                    0,
                    cfg.grad_clip,
                    lr,
                );
                sae.w_enc = sae.w_dec.shallow_clone();
                if stats.tokens >= cfg.gba.buffer_tokens {
                    sae.adapt_biases(stats, &cfg.gba);
                }
                (s.fvu, 0.0, l0, fraction(&since_fired.gt(dead_after)), gn)
            }
        };
        LogLine {
            step,
            tokens: 0,
            lr,
            loss: fvu + cfg.aux_coefficient * aux,
            fvu,
            aux_loss: aux,
            l0,
            dead_fraction,
            grad_norm,
        }
    }

    /// The named state tensors, for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = Vec::new();
        let mut push = |n: &str, t: &Tensor| out.push((n.to_owned(), t.shallow_clone()));
        let adam = match self {
            Learner::TopK {
                sae,
                adam,
                since_fired,
                ..
            } => {
                push("w_enc", &sae.w_enc);
                push("b_enc", &sae.b_enc);
                push("w_dec", &sae.w_dec);
                push("b_dec", &sae.b_dec);
                push("since_fired", since_fired);
                adam
            }
            Learner::Mp {
                sae,
                adam,
                since_fired,
            } => {
                push("atoms", &sae.atoms);
                push("b_dec", &sae.b_dec);
                push("since_fired", since_fired);
                adam
            }
            Learner::Gba {
                sae,
                adam,
                stats,
                since_fired,
            } => {
                push("b_enc", &sae.b_enc);
                push("w_dec", &sae.w_dec);
                push("b_dec", &sae.b_dec);
                push("group", &sae.group);
                push("target", &sae.target);
                push("fired", &stats.fired);
                push("max_pre", &stats.max_pre);
                push("since_fired", since_fired);
                adam
            }
        };
        for (i, (m, v)) in adam.m.iter().zip(&adam.v).enumerate() {
            push(&format!("adam.m.{i}"), m);
            push(&format!("adam.v.{i}"), v);
        }
        out
    }

    fn adam_mut(&mut self) -> &mut Adam {
        match self {
            Learner::TopK { adam, .. } | Learner::Mp { adam, .. } | Learner::Gba { adam, .. } => {
                adam
            }
        }
    }

    /// Restores the state written by [`Learner::state`] (tensors already on `device`).
    fn restore(
        &mut self,
        t: &HashMap<String, Tensor>,
        meta: &HashMap<String, String>,
        path: &Path,
    ) -> Result<()> {
        let get = |n: &str| -> Result<Tensor> {
            t.get(n)
                .map(|x| x.shallow_clone())
                .ok_or_else(|| SaeError::Format {
                    path: path.to_owned(),
                    message: format!("checkpoint tensor `{n}` is missing"),
                })
        };
        match self {
            Learner::TopK {
                sae,
                since_fired,
                threshold,
                ..
            } => {
                sae.w_enc = get("w_enc")?;
                sae.b_enc = get("b_enc")?;
                sae.w_dec = get("w_dec")?;
                sae.b_dec = get("b_dec")?;
                *since_fired = get("since_fired")?;
                *threshold = meta.get("threshold").and_then(|s| s.parse().ok());
            }
            Learner::Mp {
                sae, since_fired, ..
            } => {
                sae.atoms = get("atoms")?;
                sae.b_dec = get("b_dec")?;
                *since_fired = get("since_fired")?;
            }
            Learner::Gba {
                sae,
                stats,
                since_fired,
                ..
            } => {
                sae.b_enc = get("b_enc")?;
                sae.w_dec = get("w_dec")?;
                sae.w_enc = sae.w_dec.shallow_clone();
                sae.b_dec = get("b_dec")?;
                sae.group = get("group")?;
                sae.target = get("target")?;
                stats.fired = get("fired")?;
                stats.max_pre = get("max_pre")?;
                stats.tokens = meta
                    .get("gba_buffer_tokens")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                *since_fired = get("since_fired")?;
            }
        }
        let adam = self.adam_mut();
        for i in 0..adam.m.len() {
            adam.m[i] = get(&format!("adam.m.{i}"))?;
            adam.v[i] = get(&format!("adam.v.{i}"))?;
        }
        adam.t = meta.get("adam_t").and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(())
    }

    /// The trained dictionary in input units: the scale folded into the weights.
    fn into_dictionary(self, cfg: &TrainConfig, scale: f64) -> AnyDictionary {
        let s = scale;
        match self {
            Learner::TopK {
                mut sae, threshold, ..
            } => {
                sae.bf16_select = false;
                sae.w_enc = &sae.w_enc / s;
                sae.w_dec = &sae.w_dec * s;
                sae.b_dec = &sae.b_dec * s;
                if sae.selection == Selection::BatchTopK {
                    let n = sae.n_latents() as i64;
                    sae.threshold =
                        threshold.map(|t| Tensor::full([n], t, (Kind::Float, sae.w_enc.device())));
                }
                AnyDictionary::TopK(sae)
            }
            Learner::Mp { mut sae, .. } => {
                // Atoms stay unit-norm; coefficients come out in input units.
                sae.b_dec = &sae.b_dec * s;
                sae.bf16_gram = false;
                let stop = match cfg.mp_residual_threshold {
                    Some(threshold) => Stop::Residual {
                        threshold,
                        max_steps: cfg.mp_max_steps.unwrap_or(sae.d_in()),
                    },
                    None => Stop::Steps(cfg.mp_max_steps.unwrap_or(sae.k)),
                };
                AnyDictionary::Mp(MpDictionary { sae, stop })
            }
            Learner::Gba { mut sae, .. } => {
                sae.w_enc = &sae.w_enc / s;
                sae.w_dec = &sae.w_dec * s;
                sae.b_dec = &sae.b_dec * s;
                AnyDictionary::Gba(sae)
            }
        }
    }
}

/// Where the training outputs go, inside the dictionary's directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const LOG_FILE: &str = "metrics.jsonl";
pub const METRICS_FILE: &str = "metrics.json";

/// What a finished training run reports.
pub struct TrainReport {
    pub dictionary: AnyDictionary,
    pub steps: u64,
    pub tokens: u64,
    pub scale: f64,
    pub metrics: Option<Metrics>,
}

/// Callbacks for the caller's progress display.
pub trait Observer {
    fn start(&mut self, _total_steps: u64, _batch_tokens: usize) {}
    fn step(&mut self, _line: &LogLine) {}
}

impl Observer for () {}

/// Trains a dictionary on `train`, evaluates it on `heldout`, and writes it to `out` with its
/// config, logs and metrics. `meta` is merged into `cfg.json` (model, hook, run).
// Each argument is a separate decision of the caller (data, held-out data, settings, place,
// resume, device, provenance, display); a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn train(
    train: &dyn Source,
    heldout: Option<&dyn Source>,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    device: Device,
    meta: serde_json::Map<String, serde_json::Value>,
    observer: &mut dyn Observer,
) -> Result<TrainReport> {
    let d = train.dim();
    cfg.validate(d)?;
    std::fs::create_dir_all(out).map_err(|e| SaeError::io(out, e))?;
    if cfg.method == Method::Snmf {
        return train_snmf(train, heldout, cfg, out, device, meta, observer);
    }
    let total_steps = if cfg.tokens > 0 {
        cfg.tokens.div_ceil(cfg.batch_tokens as u64)
    } else {
        count_rows(train)? / cfg.batch_tokens as u64
    }
    .max(1);
    let warmup = (cfg.warmup_steps as u64).min(total_steps / 10);
    let lr_at = |step: u64, base: f64| {
        if step < warmup {
            base * (step + 1) as f64 / warmup as f64
        } else {
            base * (total_steps - step) as f64 / (total_steps - warmup).max(1) as f64
        }
    };
    let _guard = tch::no_grad_guard();
    let ckpt = out.join(CHECKPOINT_FILE);
    let (mut learner, mut pos) = {
        let mut first = Batcher::new(train, cfg.init_tokens, 0, 0)?;
        let sample = to_tensor(
            &first
                .next_batch()
                .or_else(|_| Batcher::new(train, cfg.batch_tokens, 0, 0)?.next_batch())?,
            d,
            device,
        );
        let scale = if cfg.normalize_input {
            let mean_norm = sample
                .norm_scalaropt_dim(2.0, [1], false)
                .mean(Kind::Float)
                .double_value(&[]);
            mean_norm / (d as f64).sqrt()
        } else {
            1.0
        };
        let learner = Learner::init(cfg, d, &(sample / scale), device);
        (
            learner,
            Progress {
                step: 0,
                epoch: 0,
                in_epoch: 0,
                tokens: 0,
                scale,
            },
        )
    };
    if resume {
        if !ckpt.exists() {
            return Err(SaeError::Data(format!(
                "nothing to resume: {} does not exist",
                ckpt.display()
            )));
        }
        let (t, m) = read_safetensors_with_metadata(&ckpt)?;
        let saved: TrainConfig = serde_json::from_str(
            m.get("config").map(String::as_str).unwrap_or("{}"),
        )
        .map_err(|e| SaeError::Format {
            path: ckpt.clone(),
            message: format!("config: {e}"),
        })?;
        if &saved != cfg {
            return Err(SaeError::Config(format!(
                "{} was written with other settings; resume with the same config (saved: {})",
                ckpt.display(),
                serde_json::to_string(&saved).unwrap_or_default()
            )));
        }
        let t: HashMap<String, Tensor> = t
            .into_iter()
            .map(|(k, v)| (k, v.to_device(device)))
            .collect();
        learner.restore(&t, &m, &ckpt)?;
        let num = |k: &str| m.get(k).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        pos = Progress {
            step: num("step"),
            epoch: num("epoch"),
            in_epoch: num("in_epoch"),
            tokens: num("tokens"),
            scale: m.get("scale").and_then(|s| s.parse().ok()).unwrap_or(1.0),
        };
        truncate_log(&out.join(LOG_FILE), pos.step)?;
    } else {
        let _ = std::fs::remove_file(out.join(LOG_FILE));
    }
    let base_lr = cfg.lr_for(cfg.latents_for(d));
    let mut batcher = Batcher::new(train, cfg.batch_tokens, pos.epoch, pos.in_epoch)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join(LOG_FILE))
        .map_err(|e| SaeError::io(&out.join(LOG_FILE), e))?;
    observer.start(total_steps, cfg.batch_tokens);
    while pos.step < total_steps {
        let x = to_tensor(&batcher.next_batch()?, d, device) / pos.scale;
        let lr = lr_at(pos.step, base_lr);
        let mut line = learner.step(&x, cfg, lr, pos.step);
        pos.step += 1;
        pos.tokens += cfg.batch_tokens as u64;
        pos.epoch = batcher.epoch;
        pos.in_epoch = batcher.in_epoch;
        line.step = pos.step;
        line.tokens = pos.tokens;
        observer.step(&line);
        if pos.step.is_multiple_of(cfg.log_every.max(1) as u64) || pos.step == total_steps {
            writeln!(log, "{}", serde_json::to_string(&line).expect("json"))
                .map_err(|e| SaeError::io(&out.join(LOG_FILE), e))?;
        }
        if cfg.checkpoint_every > 0
            && pos.step.is_multiple_of(cfg.checkpoint_every as u64)
            && pos.step < total_steps
        {
            log.sync_all()
                .map_err(|e| SaeError::io(&out.join(LOG_FILE), e))?;
            write_checkpoint(&ckpt, &learner, &pos, cfg)?;
        }
    }
    let dictionary = learner.into_dictionary(cfg, pos.scale);
    let metrics = match heldout {
        Some(h) => Some(evaluate(
            dictionary.as_dyn(),
            h,
            cfg.eval_tokens,
            cfg.batch_tokens,
            device,
        )?),
        None => None,
    };
    save_outputs(out, &dictionary, cfg, pos.scale, &metrics, meta)?;
    let _ = std::fs::remove_file(&ckpt);
    Ok(TrainReport {
        dictionary,
        steps: pos.step,
        tokens: pos.tokens,
        scale: pos.scale,
        metrics,
    })
}

fn write_checkpoint(
    path: &Path,
    learner: &Learner,
    pos: &Progress,
    cfg: &TrainConfig,
) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert("format".into(), "saescope.train-checkpoint/1".into());
    meta.insert("step".into(), pos.step.to_string());
    meta.insert("epoch".into(), pos.epoch.to_string());
    meta.insert("in_epoch".into(), pos.in_epoch.to_string());
    meta.insert("tokens".into(), pos.tokens.to_string());
    meta.insert("scale".into(), format!("{:e}", pos.scale));
    meta.insert("config".into(), serde_json::to_string(cfg).expect("json"));
    match learner {
        Learner::TopK {
            adam, threshold, ..
        } => {
            meta.insert("adam_t".into(), adam.t.to_string());
            if let Some(t) = threshold {
                meta.insert("threshold".into(), format!("{t:e}"));
            }
        }
        Learner::Mp { adam, .. } => {
            meta.insert("adam_t".into(), adam.t.to_string());
        }
        Learner::Gba { adam, stats, .. } => {
            meta.insert("adam_t".into(), adam.t.to_string());
            meta.insert("gba_buffer_tokens".into(), stats.tokens.to_string());
        }
    }
    let bytes = serialize(&learner.state(), Some(meta))?;
    saescope_store::write_atomic(path, &bytes)?;
    Ok(())
}

/// Keeps the log lines up to `step` (a resumed run rewrites the ones after its checkpoint).
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| serde_json::from_str::<LogLine>(l).is_ok_and(|x| x.step <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    saescope_store::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

fn count_rows(source: &dyn Source) -> Result<u64> {
    let mut rows = 0u64;
    for chunk in source.epoch(0)? {
        rows += (chunk?.len() / source.dim()) as u64;
    }
    Ok(rows)
}

/// Reconstruction metrics of `dict` over up to `tokens` rows of `source`.
pub fn evaluate(
    dict: &dyn Dictionary,
    source: &dyn Source,
    tokens: u64,
    batch: usize,
    device: Device,
) -> Result<Metrics> {
    let _guard = tch::no_grad_guard();
    let d = source.dim();
    let mut acc = Accumulator::new(d, dict.n_latents());
    let mut seen = 0u64;
    let mut pending: Vec<f32> = Vec::new();
    let mut chunks = source.epoch(0)?;
    loop {
        let next = chunks.next().transpose()?;
        if let Some(c) = &next {
            pending.extend_from_slice(c);
        }
        while pending.len() >= batch * d || (next.is_none() && !pending.is_empty()) {
            let take = pending.len().min(batch * d);
            let rows: Vec<f32> = pending.drain(..take).collect();
            let mut x = to_tensor(&rows, d, device);
            let left = tokens.saturating_sub(seen);
            if (x.size()[0] as u64) > left {
                x = x.narrow(0, 0, left as i64);
            }
            let codes = dict.encode(&x);
            let recon = dict.decode(&codes);
            acc.add(&x, &recon, &codes);
            seen += x.size()[0] as u64;
            if seen >= tokens {
                return Ok(acc.finish());
            }
        }
        if next.is_none() {
            break;
        }
    }
    if seen == 0 {
        return Err(SaeError::Data("no held-out tokens to evaluate on".into()));
    }
    Ok(acc.finish())
}

fn save_outputs(
    out: &Path,
    dict: &AnyDictionary,
    cfg: &TrainConfig,
    scale: f64,
    metrics: &Option<Metrics>,
    meta: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let mut extra = Vec::new();
    // Attention-output dictionaries: each feature's decoder-norm share per head.
    if let Some(heads) = meta.get("n_heads").and_then(|v| v.as_u64()) {
        let share = crate::analyze::head_share(&dict.as_dyn().atoms(), heads as i64);
        extra.push(("head_share".to_owned(), share));
    }
    let mut c = serde_json::Map::new();
    let mut ours = serde_json::json!({
        "method": cfg.method,
        "input_scale_folded": scale,
        "exclude_bos": cfg.exclude_bos,
        "config": cfg,
    });
    for (k, v) in &meta {
        ours[k] = v.clone();
    }
    if let AnyDictionary::Mp(m) = dict {
        ours["mp_stop"] = match m.stop {
            Stop::Steps(k) => serde_json::json!({"steps": k}),
            Stop::Residual {
                threshold,
                max_steps,
            } => serde_json::json!({"residual_threshold": threshold, "max_steps": max_steps}),
        };
    }
    c.insert(
        "metadata".into(),
        serde_json::json!({
            "model_name": meta.get("model").cloned().unwrap_or(serde_json::Value::Null),
            "hook_name": meta.get("hook").cloned().unwrap_or(serde_json::Value::Null),
            "context_size": meta.get("context_size").cloned().unwrap_or(serde_json::Value::Null),
            "prepend_bos": true,
        }),
    );
    if meta.get("n_heads").is_some() {
        c.insert("reshape_activations".into(), "hook_z".into());
    }
    c.insert("saescope".into(), ours);
    dict.save(out, &extra, c)?;
    if let Some(m) = metrics {
        let text = serde_json::to_string_pretty(m).expect("json");
        saescope_store::write_atomic(&out.join(METRICS_FILE), text.as_bytes())?;
    }
    Ok(())
}

/// SNMF: full batch when the token budget fits in memory, else refused unless `minibatch` asks
/// for the online variant.
fn train_snmf(
    train: &dyn Source,
    heldout: Option<&dyn Source>,
    cfg: &TrainConfig,
    out: &Path,
    device: Device,
    meta: serde_json::Map<String, serde_json::Value>,
    observer: &mut dyn Observer,
) -> Result<TrainReport> {
    let _guard = tch::no_grad_guard();
    let m = train.dim();
    let k = cfg.latents_for(m);
    let budget = if cfg.tokens > 0 {
        cfg.tokens
    } else {
        count_rows(train)?
    };
    let snmf = if cfg.snmf.minibatch == 0 {
        let need = full_batch_bytes(budget as usize, m, k);
        let avail = available_memory();
        if let Some(avail) = avail
            && need > avail / 2
        {
            return Err(SaeError::Config(format!(
                "full-batch SNMF on {budget} tokens x {m} neurons x {k} features needs about {:.1} GiB, more than half of the {:.1} GiB available; lower --tokens or set snmf.minibatch for the online variant",
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            )));
        }
        let mut rows = Vec::with_capacity(budget as usize * m);
        for chunk in train.epoch(0)? {
            rows.extend_from_slice(&chunk?);
            if rows.len() >= budget as usize * m {
                break;
            }
        }
        rows.truncate(budget as usize * m);
        let a = to_tensor(&rows, m, device);
        observer.start(cfg.snmf.max_iter as u64, a.size()[0] as usize);
        let mut prog = |it: usize, l: f64| {
            observer.step(&LogLine {
                step: it as u64 + 1,
                tokens: 0,
                lr: 0.0,
                loss: l,
                fvu: f64::NAN,
                aux_loss: 0.0,
                l0: f64::NAN,
                dead_fraction: f64::NAN,
                grad_norm: 0.0,
            })
        };
        Snmf::fit(&a, k, &cfg.snmf, cfg.seed, &mut prog).0
    } else {
        let steps = budget / cfg.snmf.minibatch as u64;
        observer.start(steps, cfg.snmf.minibatch);
        let mut batcher = Batcher::new(train, cfg.snmf.minibatch, 0, 0)?;
        let mut iter = (0..steps).map_while(|_| {
            batcher
                .next_batch()
                .ok()
                .map(|r| to_tensor(&r, m, Device::Cpu))
        });
        let mut prog = |it: usize, l: f64| {
            observer.step(&LogLine {
                step: it as u64 + 1,
                tokens: 0,
                lr: 0.0,
                loss: l,
                fvu: f64::NAN,
                aux_loss: 0.0,
                l0: f64::NAN,
                dead_fraction: f64::NAN,
                grad_norm: 0.0,
            })
        };
        Snmf::fit_online(&mut iter, m, k, &cfg.snmf, cfg.seed, device, &mut prog)
    };
    let dictionary = AnyDictionary::Snmf(SnmfDictionary {
        snmf,
        encode_iters: cfg.snmf.inner_iter,
    });
    let metrics = match heldout {
        Some(h) => Some(evaluate(
            dictionary.as_dyn(),
            h,
            cfg.eval_tokens,
            cfg.batch_tokens,
            device,
        )?),
        None => None,
    };
    save_outputs(out, &dictionary, cfg, 1.0, &metrics, meta)?;
    Ok(TrainReport {
        dictionary,
        steps: 0,
        tokens: budget,
        scale: 1.0,
        metrics,
    })
}

/// MemAvailable from /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
