//! A dictionary's files. saescope writes the SAELens v6 layout (`cfg.json` plus
//! `sae_weights.safetensors`, `W_enc` [d_in, d_sae], `W_dec` [d_sae, d_in]), so SAELens loads its
//! TopK, BatchTopK, MP-SAE and GBA dictionaries directly; method tensors SAELens has no key for
//! go beside it in `saescope_extras.safetensors`, and saescope's own settings under `cfg.json`'s
//! `saescope` object.
//!
//! Loading reads that layout, SAELens' own files ([`saelens`]) and sparsify's ([`sparsify`]),
//! deciding each matrix's orientation by its shape. Which file is where is
//! [`saescope_store::DictDir`]'s business; the weights' encoding is [`safetensors`]'s.

pub mod saelens;
pub mod safetensors;
pub mod sparsify;

use crate::dictionary::AnyDictionary;
use crate::error::{Result, SaeError};
use crate::mpsae::Stop;
use saescope_store::DictDir;
use saescope_store::dictionary::DictConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// GBA's group of each latent, in the extras.
pub const GBA_GROUP: &str = "gba_group";
/// GBA's target firing frequency of each latent, in the extras.
pub const GBA_TARGET: &str = "gba_target_frequency";

impl AnyDictionary {
    /// The named tensors of the SAELens layout, on the CPU: exactly the keys SAELens expects
    /// of the architecture, since it refuses a weights file with any other.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.to_device(Device::Cpu).contiguous();
        let mut out = Vec::new();
        match self.inner() {
            AnyDictionary::TopK(s) => {
                out.push(("W_enc".into(), cpu(&s.w_enc.tr())));
                out.push(("W_dec".into(), cpu(&s.w_dec)));
                out.push(("b_enc".into(), cpu(&s.b_enc)));
                out.push(("b_dec".into(), cpu(&s.b_dec)));
                if let Some(t) = &s.threshold {
                    out.push(("threshold".into(), cpu(t)));
                }
            }
            AnyDictionary::Mp(m) => {
                out.push(("W_dec".into(), cpu(&m.sae.atoms)));
                out.push(("b_dec".into(), cpu(&m.sae.b_dec)));
            }
            AnyDictionary::Gba(g) => {
                out.push(("W_enc".into(), cpu(&g.w_enc.tr())));
                out.push(("W_dec".into(), cpu(&g.w_dec)));
                if g.jump {
                    // SAELens JumpReLU: f = u · 1[u > threshold] with b_enc = 0.
                    out.push(("b_enc".into(), cpu(&g.b_enc.zeros_like())));
                    out.push(("threshold".into(), cpu(&-&g.b_enc)));
                } else {
                    out.push(("b_enc".into(), cpu(&g.b_enc)));
                }
                out.push(("b_dec".into(), cpu(&g.b_dec)));
            }
            AnyDictionary::Snmf(s) => {
                out.push(("W_dec".into(), cpu(&s.snmf.features)));
                let d = s.snmf.features.size()[1];
                out.push((
                    "b_dec".into(),
                    Tensor::zeros([d], (Kind::Float, Device::Cpu)),
                ));
            }
            AnyDictionary::Normalized(_) => unreachable!("inner() is never normalised"),
        }
        out
    }

    /// The method's own tensors that SAELens has no key for (GBA's groups and their target
    /// frequencies), saved beside the weights in `saescope_extras.safetensors`.
    pub fn extras(&self) -> Vec<(String, Tensor)> {
        match self.inner() {
            AnyDictionary::Gba(g) => vec![
                (
                    GBA_GROUP.into(),
                    g.group.to_device(Device::Cpu).contiguous(),
                ),
                (
                    GBA_TARGET.into(),
                    g.target.to_device(Device::Cpu).contiguous(),
                ),
            ],
            _ => Vec::new(),
        }
    }

    /// The `cfg.json` fields that describe this dictionary itself: its shape and architecture
    /// in SAELens' terms (including MP-SAE's stopping rule), layered over `cfg`, which carries
    /// the provenance.
    pub fn config(&self, mut cfg: DictConfig) -> DictConfig {
        let d = self.as_dyn();
        cfg.d_in = Some(d.d_in() as u64);
        cfg.d_sae = Some(d.n_latents() as u64);
        cfg.architecture = Some(self.architecture().into());
        for (k, v) in [("dtype", "float32"), ("device", "cpu")] {
            cfg.other.insert(k.into(), v.into());
        }
        // Loading folds a foreign file's input bias and decoder-norm rescaling into the
        // weights, so what is saved is always in SAELens' default form.
        cfg.apply_b_dec_to_input = Some(true);
        cfg.normalize_activations = Some(self.token_norm().name().into());
        cfg.reshape_activations.get_or_insert_with(|| "none".into());
        match self.inner() {
            AnyDictionary::TopK(s) => {
                cfg.k = Some(s.k as u64);
                cfg.rescale_acts_by_decoder_norm = Some(false);
            }
            AnyDictionary::Mp(m) => {
                cfg.max_iterations = Some(m.stop.max_steps as u64);
                cfg.residual_threshold = Some(m.stop.residual_threshold);
                cfg.stop_on_duplicate_support = Some(m.stop.duplicate_support);
            }
            AnyDictionary::Gba(_) | AnyDictionary::Snmf(_) | AnyDictionary::Normalized(_) => {}
        }
        cfg
    }

    /// Writes `cfg.json`, `sae_weights.safetensors` and, when there are any, the extras into
    /// `dir` (each atomically; weights first, so a config never points at weights that are not
    /// there). `extra` holds more tensors of the caller's (e.g. an attention dictionary's
    /// per-head shares), which go with the extras; `cfg` carries the provenance (see
    /// [`AnyDictionary::config`]).
    pub fn save(&self, dir: &DictDir, extra: &[(String, Tensor)], cfg: DictConfig) -> Result<()> {
        std::fs::create_dir_all(dir.path()).map_err(|e| SaeError::io(dir.path(), e))?;
        let bytes = safetensors::serialize(&self.tensors(), None)?;
        saescope_store::write_atomic(&dir.weights(), &bytes)?;
        let mut extras = self.extras();
        extras.extend(
            extra
                .iter()
                .map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).contiguous())),
        );
        if extras.is_empty() {
            match std::fs::remove_file(dir.extras()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(SaeError::io(&dir.extras(), e));
                }
                _ => {}
            }
        } else {
            let bytes = safetensors::serialize(&extras, None)?;
            saescope_store::write_atomic(&dir.extras(), &bytes)?;
        }
        let text =
            serde_json::to_string_pretty(&self.config(cfg)).map_err(|e| SaeError::Format {
                path: dir.config(),
                message: format!("cannot write the configuration: {e}"),
            })?;
        saescope_store::write_atomic(&dir.config(), text.as_bytes())?;
        Ok(())
    }

    /// Opens a dictionary saved by saescope or SAELens (`cfg.json` + `sae_weights.safetensors`)
    /// or by sparsify (`cfg.json` + `sae.safetensors`). `expected_d_in` (the activations' width)
    /// is checked when given.
    pub fn load(dir: &Path, expected_d_in: Option<usize>, device: Device) -> Result<AnyDictionary> {
        let dir = DictDir::new(dir);
        let cfg = dir.read_config()?;
        let sparsify = dir.sparsify_weights().exists() && !dir.weights().exists();
        let (d_in, d_sae) = (
            field(&dir, "d_in", cfg.d_in)?,
            field(&dir, "d_sae", cfg.latents())?,
        );
        if let Some(e) = expected_d_in
            && e != d_in
        {
            return Err(SaeError::Format {
                path: dir.config(),
                message: format!(
                    "the dictionary reads d_in = {d_in} values, the activations have {e}"
                ),
            });
        }
        let path = if sparsify {
            dir.sparsify_weights()
        } else {
            dir.weights()
        };
        let mut tensors = safetensors::read_safetensors(&path)?;
        // saescope before the extras file kept them in the weights file itself.
        if dir.extras().exists() {
            tensors.extend(safetensors::read_safetensors(&dir.extras())?);
        }
        let w = Weights {
            tensors,
            path,
            config: dir.config(),
            d_in,
            d_sae,
            device,
        };
        if sparsify {
            sparsify::load(&cfg, &w)
        } else {
            saelens::load(&cfg, &w)
        }
    }
}

/// A required whole-number field of `cfg.json`.
fn field(dir: &DictDir, name: &str, value: Option<u64>) -> Result<usize> {
    value.map(|v| v as usize).ok_or_else(|| SaeError::Format {
        path: dir.config(),
        message: format!("field `{name}` is missing or not a whole number"),
    })
}

/// A dictionary's tensors with the shapes `cfg.json` implies, for the loaders.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    path: PathBuf,
    config: PathBuf,
    d_in: usize,
    d_sae: usize,
    device: Device,
}

impl Weights {
    fn bad(&self, message: String) -> SaeError {
        SaeError::Format {
            path: self.path.clone(),
            message,
        }
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| self.bad(format!("tensor `{name}` is missing")))
    }

    /// Whether the file holds tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor `name` as it is, on the device.
    pub fn raw(&self, name: &str) -> Result<Tensor> {
        Ok(self.get(name)?.to_device(self.device))
    }

    /// A [d_sae, d_in] matrix in f32, whichever way the file stores it.
    pub fn latent_rows(&self, name: &str) -> Result<Tensor> {
        let t = self.get(name)?;
        let (n, d) = (self.d_sae as i64, self.d_in as i64);
        let s = t.size();
        let rows = if s == [n, d] {
            t.shallow_clone()
        } else if s == [d, n] {
            t.tr().contiguous()
        } else {
            return Err(self.bad(format!(
                "tensor `{name}` has shape {s:?}, which fits neither [{n}, {d}] nor [{d}, {n}] (d_sae, d_in from {})",
                self.config.display()
            )));
        };
        Ok(rows.to_kind(Kind::Float).to_device(self.device))
    }

    /// A vector of `d_in` (`per_latent` false) or `d_sae` (true) values in f32.
    pub fn vector(&self, name: &str, per_latent: bool) -> Result<Tensor> {
        let len = if per_latent { self.d_sae } else { self.d_in };
        let t = self.get(name)?;
        if t.size() != [len as i64] {
            return Err(self.bad(format!(
                "tensor `{name}` has shape {:?}, expected [{len}]",
                t.size()
            )));
        }
        Ok(t.to_kind(Kind::Float).to_device(self.device))
    }

    /// The dictionary's directory.
    pub fn dir(&self) -> &Path {
        self.config.parent().unwrap_or(Path::new("."))
    }

    /// Values read per token.
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Latents.
    pub fn d_sae(&self) -> usize {
        self.d_sae
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> Device {
        self.device
    }

    /// An error about `cfg.json`.
    pub fn config_error(&self, message: String) -> SaeError {
        SaeError::Format {
            path: self.config.clone(),
            message,
        }
    }
}

/// MP-SAE's stopping rule as `cfg.json` states it. A field the file leaves out takes SAELens'
/// default (d_in steps, threshold 0.01, stop on a duplicate support), except in a file saescope
/// wrote before it recorded the rule in those fields: that one states it in `saescope.mp_stop`
/// (`{"steps": k}` or `{"residual_threshold": t, "max_steps": m}`), or used exactly its trained k.
pub fn mp_stop(cfg: &DictConfig, d_in: usize) -> Stop {
    let stated = cfg.max_iterations.is_some()
        || cfg.residual_threshold.is_some()
        || cfg.stop_on_duplicate_support.is_some();
    if let Some(ours) = cfg.saescope.as_ref().filter(|_| !stated) {
        let old = ours.other.get("mp_stop");
        let num = |key: &str| old.and_then(|o| o.get(key));
        if let (Some(t), Some(m)) = (
            num("residual_threshold").and_then(|v| v.as_f64()),
            num("max_steps").and_then(|v| v.as_u64()),
        ) {
            return Stop {
                max_steps: m as usize,
                residual_threshold: t,
                duplicate_support: false,
            };
        }
        let k = num("steps").and_then(|v| v.as_u64()).or(cfg.trained_k());
        return Stop::steps(k.map_or(32, |k| k as usize));
    }
    Stop {
        max_steps: cfg.max_iterations.map_or(d_in, |m| m as usize),
        residual_threshold: cfg.residual_threshold.unwrap_or(0.01),
        duplicate_support: cfg.stop_on_duplicate_support.unwrap_or(true),
    }
}
