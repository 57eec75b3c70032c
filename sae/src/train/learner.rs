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
        /// BatchTopK's running threshold ([`running_threshold`]); NaN until learned.
        threshold: Tensor,
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
/// atoms back on the unit sphere. Returns the gradient norm before clipping, as an f64 scalar
/// tensor where the gradients are.
pub fn constrained_step(
    adam: &mut Adam,
    params: &mut [&mut Tensor],
    mut grads: Vec<Tensor>,
    atoms: usize,
    grad_clip: f64,
    lr: f64,
) -> Tensor {
    project_out_parallel(&mut grads[atoms], params[atoms]);
    let norm = clip_grad_norm(&mut grads, grad_clip);
    adam.step(params, &grads, lr);
    normalize_rows_(params[atoms]);
    norm
}

/// One step's figures as f64 scalar tensors where the step ran ([`crate::loss`] says why
/// they are not read at once).
pub(crate) struct Figures {
    fvu: Tensor,
    aux: Tensor,
    l0: Tensor,
    dead_fraction: Tensor,
    grad_norm: Tensor,
}

impl Figures {
    /// The log line of a step taken at `lr` (one read, which waits for the step to finish).
    pub(crate) fn read(&self, step: u64, tokens: u64, lr: f64, aux_coefficient: f64) -> LogLine {
        let all = [
            &self.fvu,
            &self.aux,
            &self.l0,
            &self.dead_fraction,
            &self.grad_norm,
        ]
        .map(|t| t.to_kind(Kind::Double));
        let v = Vec::<f64>::try_from(Tensor::stack(&all, 0).to_device(Device::Cpu))
            .expect("five f64 figures");
        let [fvu, aux_loss, l0, dead_fraction, grad_norm] = v[..] else {
            unreachable!("five figures were stacked")
        };
        LogLine {
            step,
            tokens,
            lr,
            loss: fvu + aux_coefficient * aux_loss,
            fvu,
            aux_loss,
            l0,
            dead_fraction,
            grad_norm,
        }
    }
}

/// BatchTopK's inference threshold, a running average of each step's smallest selected value
/// `m`: θ ← β·θ + (1 − β)·m, starting at the first m; a step with no positive value (m = +∞)
/// leaves θ. θ is an f64 scalar tensor, NaN until its first sample.
fn running_threshold(theta: &Tensor, m: &Tensor, beta: f64) -> Tensor {
    let blend = theta * beta + m * (1.0 - beta);
    m.where_self(&theta.isnan(), &blend)
        .where_self(&m.isfinite(), theta)
}

/// An f64 scalar tensor on `device` holding `v`, made there (a copy from the host would wait
/// for a GPU).
fn scalar(v: f64, device: Device) -> Tensor {
    Tensor::full([], v, (Kind::Double, device))
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
                    threshold: scalar(f64::NAN, device),
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

    /// One step on x (already scaled), `tokens` training tokens into the run; returns the
    /// step's figures where they were computed (read them for a log line only).
    pub(crate) fn step(
        &mut self,
        x: &Tensor,
        cfg: &TrainConfig,
        lr: f64,
        step: u64,
        tokens: u64,
    ) -> Figures {
        let b = x.size()[0];
        let d = x.size()[1] as usize;
        let dead_after = cfg.dead_tokens as i64;
        // A latent is dead after `dead_tokens` without firing, so none can be before then:
        // AuxK, which must read how many are dead, is skipped until a latent can have died.
        let may_be_dead = tokens > cfg.dead_tokens;
        let fraction = |mask: &Tensor| mask.to_kind(Kind::Double).mean(Kind::Double);
        let mark_fired = |since: &mut Tensor, fired: &Tensor| {
            let _ = since.g_add_scalar_(b);
            let _ = since.masked_fill_(fired, 0);
        };
        let code_l0 = |vals: &Tensor| vals.gt(0.0).sum(Kind::Double) / b as f64;
        match self {
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
                let s = sae.train_step(x, may_be_dead.then_some(&dead), aux);
                mark_fired(since_fired, &s.codes.fired());
                let g = vec![s.grads.w_enc, s.grads.b_enc, s.grads.w_dec, s.grads.b_dec];
                let params = &mut [
                    &mut sae.w_enc,
                    &mut sae.b_enc,
                    &mut sae.w_dec,
                    &mut sae.b_dec,
                ];
                let grad_norm = constrained_step(adam, params, g, 2, cfg.grad_clip, lr);
                if let (Some(m), true) = (s.min_selected, step as usize >= cfg.threshold_start_step)
                {
                    *threshold = running_threshold(threshold, &m, cfg.threshold_beta);
                }
                Figures {
                    fvu: s.fvu,
                    aux: s.aux,
                    l0: code_l0(&s.codes.vals),
                    dead_fraction: fraction(&dead),
                    grad_norm,
                }
            }
            Learner::Mp {
                sae,
                adam,
                since_fired,
            } => {
                let s = sae.train_step(x);
                mark_fired(since_fired, &s.codes.fired());
                let g = vec![s.atoms_grad, s.b_dec_grad];
                let params = &mut [&mut sae.atoms, &mut sae.b_dec];
                let grad_norm = constrained_step(adam, params, g, 0, cfg.grad_clip, lr);
                Figures {
                    aux: s.fvu.zeros_like(),
                    fvu: s.fvu,
                    l0: code_l0(&s.codes.vals),
                    dead_fraction: fraction(&since_fired.gt(dead_after)),
                    grad_norm,
                }
            }
            Learner::Gba {
                sae,
                adam,
                stats,
                since_fired,
            } => {
                let s = sae.train_step(x, stats);
                let active = s.acts.gt(0.0);
                mark_fired(since_fired, &active.any_dim(0, false));
                let g = vec![s.w_enc + s.w_dec, s.b_dec];
                let grad_norm = constrained_step(
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
                Figures {
                    aux: s.fvu.zeros_like(),
                    fvu: s.fvu,
                    l0: active.sum(Kind::Double) / b as f64,
                    dead_fraction: fraction(&since_fired.gt(dead_after)),
                    grad_norm,
                }
            }
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
                let learned = meta.get("threshold").and_then(|s| s.parse().ok());
                *threshold = scalar(learned.unwrap_or(f64::NAN), sae.w_enc.device());
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
                let learned = threshold.double_value(&[]);
                if sae.selection == Selection::BatchTopK && !learned.is_nan() {
                    let n = sae.n_latents() as i64;
                    sae.threshold = Some(Tensor::full(
                        [n],
                        learned,
                        (Kind::Float, sae.w_enc.device()),
                    ));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The first finite sample starts θ, later ones blend in, and a step without a positive
    /// value (+∞) leaves θ as it was, before and after the start; all as the f64 arithmetic.
    #[test]
    fn the_running_threshold_starts_blends_and_skips_empty_steps() {
        let cpu = Device::Cpu;
        let v = |t: &Tensor| t.double_value(&[]);
        let beta = 0.9;
        let mut theta = scalar(f64::NAN, cpu);
        theta = running_threshold(&theta, &scalar(f64::INFINITY, cpu), beta);
        assert!(v(&theta).is_nan(), "no sample yet");
        theta = running_threshold(&theta, &scalar(2.0, cpu), beta);
        assert_eq!(v(&theta), 2.0);
        theta = running_threshold(&theta, &scalar(0.5, cpu), beta);
        assert_eq!(v(&theta), beta * 2.0 + (1.0 - beta) * 0.5);
        let before = v(&theta);
        theta = running_threshold(&theta, &scalar(f64::INFINITY, cpu), beta);
        assert_eq!(v(&theta), before);
    }
}
