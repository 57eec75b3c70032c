//! A gradient learner's whole mutable state (weights, Adam moments, dead-latent counters,
//! BatchTopK's running threshold, GBA's buffer statistics) and the one step each takes; plus
//! the pieces every learner shares: the initial decoder bias, the constrained update, and
//! whether bf16 selection pays on a device.

use super::config::{Method, TrainConfig};
use crate::adam::{Adam, clip_grad_norm};
use crate::dictionary::{AnyDictionary, MpDictionary};
use crate::error::{Result, SaeError};
use crate::gba::{BufferStats, GbaSae};
use crate::mpsae::{MpSae, Stop};
use crate::seeded::Seeded;
use crate::topk::{AuxK, Selection, TopKSae, normalize_rows_, project_out_parallel};
use saescope_store::dictionary::LogLine;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A gradient learner's whole mutable state.
pub(crate) enum Learner {
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
    pub(crate) fn init(cfg: &TrainConfig, d: usize, sample: &Tensor, device: Device) -> Learner {
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
    pub(crate) fn step(&mut self, x: &Tensor, cfg: &TrainConfig, lr: f64, step: u64) -> LogLine {
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
    pub(crate) fn state(&self) -> Vec<(String, Tensor)> {
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
    pub(crate) fn restore(
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
    pub(crate) fn into_dictionary(self, cfg: &TrainConfig, scale: f64) -> AnyDictionary {
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
                    Some(threshold) => Stop {
                        max_steps: cfg.mp_max_steps.unwrap_or(sae.d_in()),
                        residual_threshold: threshold,
                        duplicate_support: false,
                    },
                    None => Stop::steps(cfg.mp_max_steps.unwrap_or(sae.k)),
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
