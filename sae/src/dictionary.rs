//! The interface every learner's result implements, and its on-disk form: the SAELens v6
//! layout (`cfg.json` plus `sae_weights.safetensors`, `W_enc` [d_in, d_sae], `W_dec`
//! [d_sae, d_in]), so SAELens loads TopK and BatchTopK dictionaries directly, with
//! method-specific tensors under clearly named extra keys and saescope's own settings under
//! `cfg.json`'s `saescope` object. Loading also reads sparsify's `sae.safetensors`, deciding each
//! matrix's orientation by its shape.

use crate::error::{Result, SaeError};
use crate::gba::GbaSae;
use crate::mpsae::{MpSae, Stop};
use crate::snmf::Snmf;
use crate::sparse::SparseCodes;
use crate::topk::{Selection, TopKSae};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Encode to sparse codes, decode, and the decoder's atoms: what analysis needs of any method.
pub trait Dictionary {
    fn d_in(&self) -> usize;
    fn n_latents(&self) -> usize;
    fn encode(&self, x: &Tensor) -> SparseCodes;
    fn decode(&self, codes: &SparseCodes) -> Tensor;
    /// Decoder directions [n_latents, d_in].
    fn atoms(&self) -> Tensor;
    /// The linear part of the encoder, for dictionaries that have one (TopK, BatchTopK, GBA):
    /// pre-activation = (x − b_dec) · w[f] + b_enc[f].
    fn encoder(&self) -> Option<LinearEncoder> {
        None
    }
}

/// An encoder's weights, rows per latent.
pub struct LinearEncoder {
    pub w: Tensor,
    pub b_enc: Tensor,
    pub b_dec: Tensor,
}

impl Dictionary for TopKSae {
    fn d_in(&self) -> usize {
        TopKSae::d_in(self)
    }
    fn n_latents(&self) -> usize {
        TopKSae::n_latents(self)
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        TopKSae::encode(self, x)
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        TopKSae::decode(self, codes)
    }
    fn atoms(&self) -> Tensor {
        self.w_dec.shallow_clone()
    }
    fn encoder(&self) -> Option<LinearEncoder> {
        Some(LinearEncoder {
            w: self.w_enc.shallow_clone(),
            b_enc: self.b_enc.shallow_clone(),
            b_dec: self.b_dec.shallow_clone(),
        })
    }
}

/// An MP-SAE with its inference stopping rule.
pub struct MpDictionary {
    pub sae: MpSae,
    pub stop: Stop,
}

impl Dictionary for MpDictionary {
    fn d_in(&self) -> usize {
        self.sae.d_in()
    }
    fn n_latents(&self) -> usize {
        self.sae.n_latents()
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        self.sae.encode(x, self.stop)
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        self.sae.decode(codes)
    }
    fn atoms(&self) -> Tensor {
        self.sae.atoms.shallow_clone()
    }
}

impl Dictionary for GbaSae {
    fn d_in(&self) -> usize {
        self.w_enc.size()[1] as usize
    }
    fn n_latents(&self) -> usize {
        GbaSae::n_latents(self)
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        SparseCodes::from_dense(&self.encode_dense(x))
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        codes.combine(&self.w_dec) + &self.b_dec
    }
    fn atoms(&self) -> Tensor {
        self.w_dec.shallow_clone()
    }
    fn encoder(&self) -> Option<LinearEncoder> {
        Some(LinearEncoder {
            w: self.w_enc.shallow_clone(),
            b_enc: self.b_enc.shallow_clone(),
            b_dec: self.b_dec.shallow_clone(),
        })
    }
}

/// SNMF features with the number of multiplicative updates used to encode.
pub struct SnmfDictionary {
    pub snmf: Snmf,
    pub encode_iters: usize,
}

impl Dictionary for SnmfDictionary {
    fn d_in(&self) -> usize {
        self.snmf.features.size()[1] as usize
    }
    fn n_latents(&self) -> usize {
        self.snmf.n_latents()
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        let g = self.snmf.encode_dense(x, self.encode_iters);
        // Multiplicative updates never reach exact zero; tiny codes are dropped.
        SparseCodes::from_dense(&g.threshold(1e-6, 0.0))
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        codes.combine(&self.snmf.features)
    }
    fn atoms(&self) -> Tensor {
        self.snmf.features.shallow_clone()
    }
}

pub const CFG_FILE: &str = "cfg.json";

/// What a dictionary's `cfg.json` says about where it came from (saescope's, SAELens' or
/// sparsify's fields, whichever are present).
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    /// Hook in TransformerLens naming (`metadata.hook_name`, or `hook_name` in older SAELens).
    pub hook: Option<String>,
    /// The harvest run it was trained on, as recorded by saescope.
    pub run: Option<std::path::PathBuf>,
    pub model: Option<String>,
}

impl Provenance {
    pub fn read(dir: &Path) -> Result<Provenance> {
        let path = dir.join(CFG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| SaeError::io(&path, e))?;
        let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| SaeError::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let s = |p: &str| cfg.pointer(p).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(Provenance {
            hook: s("/metadata/hook_name")
                .or_else(|| s("/hook_name"))
                .or_else(|| s("/saescope/hook")),
            run: s("/saescope/run").map(Into::into),
            model: s("/metadata/model_name").or_else(|| s("/model_name")),
        })
    }
}
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";
pub const SPARSIFY_WEIGHTS_FILE: &str = "sae.safetensors";

/// A dictionary of any method, as saved and loaded.
pub enum AnyDictionary {
    TopK(TopKSae),
    Mp(MpDictionary),
    Gba(GbaSae),
    Snmf(SnmfDictionary),
}

impl AnyDictionary {
    pub fn as_dyn(&self) -> &dyn Dictionary {
        match self {
            AnyDictionary::TopK(d) => d,
            AnyDictionary::Mp(d) => d,
            AnyDictionary::Gba(d) => d,
            AnyDictionary::Snmf(d) => d,
        }
    }

    /// The SAELens `architecture` string.
    pub fn architecture(&self) -> &'static str {
        match self {
            AnyDictionary::TopK(s) if s.selection == Selection::BatchTopK => "jumprelu",
            AnyDictionary::TopK(_) => "topk",
            AnyDictionary::Mp(_) => "matching_pursuit",
            AnyDictionary::Gba(g) if g.jump => "jumprelu",
            AnyDictionary::Gba(_) => "standard",
            AnyDictionary::Snmf(_) => "snmf",
        }
    }

    /// The named tensors of the SAELens layout (plus extras), on the CPU.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.to_device(Device::Cpu).contiguous();
        let mut out = Vec::new();
        match self {
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
                out.push(("gba_group".into(), cpu(&g.group)));
                out.push(("gba_target_frequency".into(), cpu(&g.target)));
            }
            AnyDictionary::Snmf(s) => {
                out.push(("W_dec".into(), cpu(&s.snmf.features)));
                let d = s.snmf.features.size()[1];
                out.push((
                    "b_dec".into(),
                    Tensor::zeros([d], (Kind::Float, Device::Cpu)),
                ));
            }
        }
        out
    }

    /// Writes `cfg.json` and `sae_weights.safetensors` into `dir` (each atomically; weights
    /// first, so a config never points at weights that are not there). `extra` holds more
    /// tensors (e.g. an attention dictionary's per-head shares); `cfg` is merged into the
    /// SAELens fields.
    pub fn save(
        &self,
        dir: &Path,
        extra: &[(String, Tensor)],
        cfg: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| SaeError::io(dir, e))?;
        let mut tensors = self.tensors();
        tensors.extend(
            extra
                .iter()
                .map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).contiguous())),
        );
        let bytes = serialize(&tensors, None)?;
        saescope_store::write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
        let d = self.as_dyn();
        let mut c = serde_json::json!({
            "d_in": d.d_in(),
            "d_sae": d.n_latents(),
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": true,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "architecture": self.architecture(),
        });
        let obj = c.as_object_mut().expect("object");
        if let AnyDictionary::TopK(s) = self {
            obj.insert("k".into(), s.k.into());
            obj.insert("rescale_acts_by_decoder_norm".into(), false.into());
        }
        for (k, v) in cfg {
            obj.insert(k, v);
        }
        let text = serde_json::to_string_pretty(&c).expect("json");
        saescope_store::write_atomic(&dir.join(CFG_FILE), text.as_bytes())?;
        Ok(())
    }

    /// Opens a dictionary saved by saescope or SAELens (`cfg.json` + `sae_weights.safetensors`)
    /// or by sparsify (`cfg.json` + `sae.safetensors`). Matrix orientation is decided by shape;
    /// `expected_d_in` (the activations' width) is checked when given.
    pub fn load(dir: &Path, expected_d_in: Option<usize>, device: Device) -> Result<AnyDictionary> {
        let cfg_path = dir.join(CFG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| SaeError::io(&cfg_path, e))?;
        let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| SaeError::Format {
            path: cfg_path.clone(),
            message: e.to_string(),
        })?;
        let sparsify = dir.join(SPARSIFY_WEIGHTS_FILE).exists() && !dir.join(WEIGHTS_FILE).exists();
        let wpath = dir.join(if sparsify {
            SPARSIFY_WEIGHTS_FILE
        } else {
            WEIGHTS_FILE
        });
        let tensors = read_safetensors(&wpath)?;
        let field = |name: &str| -> Result<usize> {
            cfg.get(name)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| SaeError::Format {
                    path: cfg_path.clone(),
                    message: format!("field `{name}` is missing or not a whole number"),
                })
        };
        let (d_in, d_sae) = if sparsify {
            let d_in = field("d_in")?;
            let n = match field("num_latents") {
                Ok(n) if n > 0 => n,
                _ => field("expansion_factor")? * d_in,
            };
            (d_in, n)
        } else {
            (field("d_in")?, field("d_sae")?)
        };
        if let Some(e) = expected_d_in
            && e != d_in
        {
            return Err(SaeError::Format {
                path: cfg_path,
                message: format!(
                    "the dictionary reads d_in = {d_in} values, the activations have {e}"
                ),
            });
        }
        let get = |name: &str| -> Result<&Tensor> {
            tensors.get(name).ok_or_else(|| SaeError::Format {
                path: wpath.clone(),
                message: format!("tensor `{name}` is missing"),
            })
        };
        // A [d_sae, d_in] matrix whichever way the file stores it.
        let latent_rows = |name: &str| -> Result<Tensor> {
            let t = get(name)?;
            let s = t.size();
            let rows = if s == [d_sae as i64, d_in as i64] {
                t.shallow_clone()
            } else if s == [d_in as i64, d_sae as i64] {
                t.tr().contiguous()
            } else {
                return Err(SaeError::Format {
                    path: wpath.clone(),
                    message: format!(
                        "tensor `{name}` has shape {s:?}, which fits neither [{d_sae}, {d_in}] nor [{d_in}, {d_sae}] (d_sae, d_in from {})",
                        cfg_path.display()
                    ),
                });
            };
            Ok(rows.to_kind(Kind::Float).to_device(device))
        };
        let vector = |name: &str, len: usize| -> Result<Tensor> {
            let t = get(name)?;
            if t.size() != [len as i64] {
                return Err(SaeError::Format {
                    path: wpath.clone(),
                    message: format!("tensor `{name}` has shape {:?}, expected [{len}]", t.size()),
                });
            }
            Ok(t.to_kind(Kind::Float).to_device(device))
        };
        let k_of = |cfg: &serde_json::Value| {
            cfg.get("k")
                .or_else(|| cfg.pointer("/activation_fn_kwargs/k"))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
        };
        if sparsify {
            let k = k_of(&cfg).ok_or_else(|| SaeError::Format {
                path: cfg_path.clone(),
                message: "field `k` is missing".into(),
            })?;
            return Ok(AnyDictionary::TopK(TopKSae {
                w_enc: latent_rows("encoder.weight")?,
                b_enc: vector("encoder.bias", d_sae)?,
                w_dec: latent_rows("W_dec")?,
                b_dec: vector("b_dec", d_in)?,
                k,
                selection: Selection::TopK,
                threshold: None,
                bf16_select: false,
            }));
        }
        let arch = cfg
            .get("architecture")
            .and_then(|v| v.as_str())
            .or_else(|| {
                cfg.get("activation_fn")
                    .and_then(|v| v.as_str())
                    .filter(|s| *s == "topk")
            })
            .unwrap_or("standard");
        let ours = cfg.get("saescope");
        let gba_extras = match (
            tensors.get("gba_group"),
            tensors.get("gba_target_frequency"),
        ) {
            (Some(g), Some(t)) => Some((g.to_device(device), t.to_device(device))),
            _ => None,
        };
        Ok(match arch {
            "jumprelu" if gba_extras.is_some() => {
                let (group, target) = gba_extras.unwrap();
                AnyDictionary::Gba(GbaSae {
                    w_enc: latent_rows("W_enc")?,
                    b_enc: -vector("threshold", d_sae)? + vector("b_enc", d_sae)?,
                    w_dec: latent_rows("W_dec")?,
                    b_dec: vector("b_dec", d_in)?,
                    group,
                    target,
                    jump: true,
                })
            }
            "topk" | "jumprelu" => {
                let threshold = if arch == "jumprelu" {
                    Some(vector("threshold", d_sae)?)
                } else {
                    None
                };
                let k = k_of(&cfg)
                    .or_else(|| {
                        ours.and_then(|o| o.pointer("/config/k"))
                            .and_then(|v| v.as_u64())
                            .map(|v| v as usize)
                    })
                    .unwrap_or(0);
                AnyDictionary::TopK(TopKSae {
                    w_enc: latent_rows("W_enc")?,
                    b_enc: vector("b_enc", d_sae)?,
                    w_dec: latent_rows("W_dec")?,
                    b_dec: vector("b_dec", d_in)?,
                    k,
                    selection: if arch == "jumprelu" {
                        Selection::BatchTopK
                    } else {
                        Selection::TopK
                    },
                    threshold,
                    bf16_select: false,
                })
            }
            "matching_pursuit" => {
                let k = ours
                    .and_then(|o| o.pointer("/config/k"))
                    .and_then(|v| v.as_u64())
                    .unwrap_or(32) as usize;
                AnyDictionary::Mp(MpDictionary {
                    sae: MpSae {
                        atoms: latent_rows("W_dec")?,
                        b_dec: vector("b_dec", d_in)?,
                        k,
                        bf16_gram: false,
                    },
                    stop: Stop::Steps(k),
                })
            }
            "snmf" => AnyDictionary::Snmf(SnmfDictionary {
                snmf: Snmf {
                    features: latent_rows("W_dec")?,
                },
                encode_iters: 50,
            }),
            "standard" => {
                let (group, target) = gba_extras.unwrap_or_else(|| {
                    (
                        Tensor::zeros([d_sae as i64], (Kind::Int64, device)),
                        Tensor::ones([d_sae as i64], (Kind::Float, device)),
                    )
                });
                AnyDictionary::Gba(GbaSae {
                    w_enc: latent_rows("W_enc")?,
                    b_enc: vector("b_enc", d_sae)?,
                    w_dec: latent_rows("W_dec")?,
                    b_dec: vector("b_dec", d_in)?,
                    group,
                    target,
                    jump: false,
                })
            }
            other => {
                return Err(SaeError::Format {
                    path: cfg_path,
                    message: format!(
                        "architecture `{other}` is not supported (topk, jumprelu, standard, matching_pursuit, snmf)"
                    ),
                });
            }
        })
    }
}

/// safetensors bytes of CPU tensors (f32, i64), with optional metadata.
pub fn serialize(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let (dtype, bytes) = match t.kind() {
            Kind::Int64 => {
                let v = Vec::<i64>::try_from(t.reshape([-1]))?;
                (
                    StDtype::I64,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                )
            }
            _ => {
                let v = Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1]))?;
                (
                    StDtype::F32,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                )
            }
        };
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<std::result::Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}

/// Reads every tensor of a safetensors file onto the CPU (f32, f16, bf16 become f32; i64 stays).
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let (tensors, _) = read_safetensors_with_metadata(path)?;
    Ok(tensors)
}

pub fn read_safetensors_with_metadata(
    path: &Path,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| SaeError::io(path, e))?;
    let bad = |m: String| SaeError::Format {
        path: path.to_owned(),
        message: m,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let kind = match view.dtype() {
            StDtype::F32 => Kind::Float,
            StDtype::F16 => Kind::Half,
            StDtype::BF16 => Kind::BFloat16,
            StDtype::I64 => Kind::Int64,
            other => {
                return Err(bad(format!(
                    "tensor `{name}` has unsupported dtype {other:?}"
                )));
            }
        };
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        let t = if kind == Kind::Int64 {
            t
        } else {
            t.to_kind(Kind::Float)
        };
        out.insert(name, t);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
