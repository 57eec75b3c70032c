//! Hugging Face checkpoints: a directory with `config.json` and safetensors weights, either one
//! `model.safetensors` or shards listed in `model.safetensors.index.json`. Pickled checkpoints
//! are refused here, for files and directories alike ([`refuse_pickled`]): unpickling can run
//! arbitrary code.

use crate::attention::RopeScaling;
use crate::error::ModelError;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The fields of `config.json` that saescope reads, for the Llama family (Llama, Qwen2, Qwen3,
/// Mistral), Gemma 2 and 3, GPT-2, GPT-NeoX and BERT. Unknown fields are ignored; each architecture
/// checks that the ones it needs are present ([`HfCheckpoint::need`]). Fields shared by several
/// families are documented once, with the families that read them.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct HfConfig {
    /// `llama`, `qwen2`, `qwen3`, `mistral`, `gemma2`, `gemma3_text`, `gpt2` or `gpt_neox`.
    pub model_type: Option<String>,
    /// The model's name as transformers saved it.
    #[serde(rename = "_name_or_path")]
    pub name_or_path: Option<String>,
    /// Llama, Gemma, NeoX: layers.
    pub num_hidden_layers: Option<usize>,
    /// Llama, Gemma, NeoX: model width.
    pub hidden_size: Option<usize>,
    /// Llama, Gemma, NeoX: query heads.
    pub num_attention_heads: Option<usize>,
    /// Llama, Gemma: key/value heads (grouped-query attention; default: the query heads).
    pub num_key_value_heads: Option<usize>,
    /// Llama, Gemma: head size (default: width / heads).
    pub head_dim: Option<usize>,
    /// Llama, Gemma, NeoX: MLP width.
    pub intermediate_size: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: Option<usize>,
    /// Llama, Gemma, NeoX: context length.
    pub max_position_embeddings: Option<usize>,
    /// Llama, Gemma: RMSNorm epsilon (default 1e-6).
    pub rms_norm_eps: Option<f64>,
    /// RoPE base, older transformers (default 10,000; Gemma 3: its global layers' base,
    /// default 1,000,000).
    pub rope_theta: Option<f64>,
    /// RoPE settings, newer transformers: flat, or (Gemma 3) one set per layer type.
    pub rope_parameters: Option<RopeParameters>,
    /// RoPE scaling, older transformers (Gemma 3: of the global layers only).
    pub rope_scaling: Option<RopeParameters>,
    /// Gemma 3, older transformers: the RoPE base of the sliding-window layers (default 10,000).
    pub rope_local_base_freq: Option<f64>,
    /// Whether the unembedding is the token embedding (Llama default false when `lm_head.weight`
    /// is present; Gemma default true).
    pub tie_word_embeddings: Option<bool>,
    /// Width of the sliding window of the layers that have one (Mistral: all layers; Qwen2/3
    /// only with `use_sliding_window`; Gemma: the layers `layer_types` or the pattern name).
    /// `None` when absent, `Some(None)` when null: Gemma's default (4096) applies only to the
    /// first.
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<usize>>,
    /// Qwen2/3, older transformers: whether layers from `max_window_layers` on slide.
    pub use_sliding_window: Option<bool>,
    /// Qwen2/3, older transformers: the first layer with a sliding window.
    pub max_window_layers: Option<usize>,
    /// Each layer's attention, newer transformers: `full_attention` or `sliding_attention`.
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3, older transformers: every n-th layer (n, 2n, ...) is global, the others slide
    /// (default 6).
    pub sliding_window_pattern: Option<usize>,
    /// The same under the name some transformers versions save it as (both may be present).
    #[serde(rename = "_sliding_window_pattern")]
    pub sliding_window_pattern_private: Option<usize>,
    /// Gemma: attention scores are scaled by this to the -1/2 (default 256, as transformers').
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: soft cap of the attention scores (transformers ignores it for Gemma 3). `None`
    /// when absent (Gemma 2's default, 50, applies), `Some(None)` when null (no cap).
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    /// Gemma: soft cap of the logits; absent and null as for `attn_logit_softcapping` (Gemma 2's
    /// default is 30).
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    /// Gemma 3: attention in both directions (EmbeddingGemma), which saescope refuses.
    pub use_bidirectional_attention: Option<bool>,
    /// Gemma: the MLP's gate activation (`gelu_pytorch_tanh`).
    pub hidden_activation: Option<String>,
    /// NeoX (and Gemma, older transformers): the MLP's activation (`gelu`: exact).
    pub hidden_act: Option<String>,
    /// NeoX: whether the attention projections have biases (default true).
    pub attention_bias: Option<bool>,
    /// NeoX, older transformers: the fraction of each head's dimensions that RoPE turns.
    pub rotary_pct: Option<f64>,
    /// NeoX: same as `rotary_pct`, under its newer name.
    pub partial_rotary_factor: Option<f64>,
    /// NeoX, older transformers: the RoPE base.
    pub rotary_emb_base: Option<f64>,
    /// NeoX: x + attn(LN₁ x) + mlp(LN₂ x) when true (default), else the sequential form.
    pub use_parallel_residual: Option<bool>,
    /// NeoX: LayerNorm epsilon (default 1e-5).
    pub layer_norm_eps: Option<f64>,
    /// BERT: token types (default 2).
    pub type_vocab_size: Option<usize>,
    /// GPT-2: layers.
    pub n_layer: Option<usize>,
    /// GPT-2: model width.
    pub n_embd: Option<usize>,
    /// GPT-2: heads.
    pub n_head: Option<usize>,
    /// GPT-2: MLP width (default 4 × width).
    pub n_inner: Option<usize>,
    /// GPT-2: context length.
    pub n_positions: Option<usize>,
    /// GPT-2: LayerNorm epsilon (default 1e-5).
    pub layer_norm_epsilon: Option<f64>,
    /// GPT-2: the MLP's activation (`gelu_new` is supported).
    pub activation_function: Option<String>,
}

/// Tells a field that is present, even as null, from one that is absent.
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `rope_parameters` (newer transformers) or `rope_scaling` (older): the base, the scaling
/// type and its factor, and for GPT-NeoX the rotated fraction of a head. Gemma 3 keeps one such
/// set per layer type, under `sliding_attention` and `full_attention`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RopeParameters {
    /// The RoPE base.
    pub rope_theta: Option<f64>,
    /// `default`, `linear`, `llama3`, or a scaling saescope refuses (`yarn`, `dynamic`, ...).
    pub rope_type: Option<String>,
    /// The same, as older configs name it.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// The scaling factor (`linear`: every frequency is divided by it).
    pub factor: Option<f64>,
    /// `llama3`: wavelengths above original context / this are fully scaled.
    pub low_freq_factor: Option<f64>,
    /// `llama3`: wavelengths below original context / this are kept.
    pub high_freq_factor: Option<f64>,
    /// `llama3`: the context the model was first trained with.
    pub original_max_position_embeddings: Option<f64>,
    /// NeoX: the fraction of each head's dimensions that RoPE turns.
    pub partial_rotary_factor: Option<f64>,
    /// Gemma 3: the sliding-window layers' parameters.
    pub sliding_attention: Option<Box<RopeParameters>>,
    /// Gemma 3: the global layers' parameters.
    pub full_attention: Option<Box<RopeParameters>>,
}

impl RopeParameters {
    /// The frequency scaling these parameters ask for. Any type but `default`, `linear` and
    /// `llama3` changes the frequencies (or the attention's temperature) in ways saescope does
    /// not compute, and is refused rather than run wrong.
    pub fn scaling(&self) -> Result<RopeScaling> {
        let kind = self.rope_type.as_deref().or(self.type_.as_deref());
        let need = |field: &str, v: Option<f64>| {
            v.ok_or_else(|| {
                ModelError::Config(format!(
                    "rope scaling `{}` without `{field}`",
                    kind.unwrap_or_default()
                ))
            })
        };
        match kind {
            None | Some("default") => Ok(RopeScaling::None),
            Some("linear") => Ok(RopeScaling::Linear(need("factor", self.factor)?)),
            Some("llama3") => Ok(RopeScaling::Llama3 {
                factor: need("factor", self.factor)?,
                low_freq_factor: need("low_freq_factor", self.low_freq_factor)?,
                high_freq_factor: need("high_freq_factor", self.high_freq_factor)?,
                original_ctx: need(
                    "original_max_position_embeddings",
                    self.original_max_position_embeddings,
                )?,
            }),
            Some(other) => Err(ModelError::Config(format!(
                "rope scaling `{other}` is not supported (saescope computes `default`, `linear` \
                 and `llama3`)"
            ))),
        }
    }
}

impl HfConfig {
    /// The flat RoPE settings: `rope_parameters` of newer transformers, where it has a base or
    /// scaling type, else `rope_scaling` of older ones, each possibly absent.
    pub fn rope(&self) -> RopeParameters {
        let flat = self
            .rope_parameters
            .clone()
            .filter(|r| r.sliding_attention.is_none() && r.full_attention.is_none())
            .unwrap_or_default();
        let mut r = match &self.rope_scaling {
            Some(s) if flat.rope_type.is_none() && flat.type_.is_none() => RopeParameters {
                rope_theta: flat.rope_theta,
                partial_rotary_factor: flat.partial_rotary_factor,
                ..s.clone()
            },
            _ => flat,
        };
        r.rope_theta = r.rope_theta.or(self.rope_theta);
        r
    }

    /// The window of layer `layer`, if it slides: from `layer_types`, or for
    /// older Qwen configs from `use_sliding_window` and `max_window_layers`, and for Mistral
    /// from `sliding_window` alone (every layer). Gemma decides its own (see `gemma.rs`).
    pub fn llama_window(&self, layer: usize) -> Option<usize> {
        let w = self.sliding_window.flatten()?;
        if let Some(types) = &self.layer_types {
            return (types.get(layer).map(String::as_str) == Some("sliding_attention"))
                .then_some(w);
        }
        match self.model_type.as_deref() {
            Some("mistral") => Some(w),
            Some("qwen2" | "qwen3") => (self.use_sliding_window == Some(true)
                && layer >= self.max_window_layers.unwrap_or(0))
            .then_some(w),
            _ => None,
        }
    }
}

/// An opened checkpoint: its config and every tensor's file, read on demand.
pub struct HfCheckpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Its `config.json`.
    pub config: HfConfig,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

fn bad(path: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("{}: {message}", path.display()))
}

/// Refuses a pickled checkpoint: a `.bin`, `.pt`, `.pth` or `.ckpt` file, or a checkpoint
/// directory that holds a `pytorch_model.bin` and no safetensors weights.
pub fn refuse_pickled(path: &Path) -> Result<()> {
    let pickled_file = |p: &Path| {
        p.extension()
            .is_some_and(|e| e == "bin" || e == "pt" || e == "pth" || e == "ckpt")
    };
    if pickled_file(path) {
        return Err(ModelError::Pickled(path.to_owned()));
    }
    if path.is_dir()
        && path.join("pytorch_model.bin").exists()
        && !path.join("model.safetensors").exists()
        && !path.join("model.safetensors.index.json").exists()
    {
        return Err(ModelError::Pickled(path.join("pytorch_model.bin")));
    }
    Ok(())
}

impl HfConfig {
    /// Reads `config.json`, naming the field that does not fit.
    pub fn read(path: &Path) -> Result<HfConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| ModelError::HfConfig {
            path: path.to_owned(),
            field: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }
}

impl HfCheckpoint {
    /// Opens the checkpoint in `dir`: its config, and every safetensors file's header.
    pub fn open(dir: &Path) -> Result<Self> {
        refuse_pickled(dir)?;
        let config = HfConfig::read(&dir.join("config.json"))?;
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index_path.exists() {
            #[derive(Deserialize)]
            struct Index {
                weight_map: HashMap<String, String>,
            }
            let text = std::fs::read_to_string(&index_path).map_err(|e| bad(&index_path, e))?;
            let idx: Index = serde_json::from_str(&text).map_err(|e| bad(&index_path, e))?;
            let mut files: Vec<PathBuf> = idx.weight_map.values().map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            files
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            return Err(bad(
                dir,
                "no model.safetensors or model.safetensors.index.json",
            ));
        };
        let mut index = HashMap::new();
        let mut files = Vec::new();
        for (i, path) in names.into_iter().enumerate() {
            let bytes = std::fs::read(&path).map_err(|e| bad(&path, e))?;
            let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(&path, e))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            files.push((path, bytes));
        }
        Ok(HfCheckpoint {
            dir: dir.to_owned(),
            config,
            index,
            files,
        })
    }

    /// Whether the checkpoint holds tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A required config field: its value, or an error naming `config.json` and the field.
    pub fn need<T: Copy>(&self, field: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| ModelError::HfConfig {
            path: self.dir.join("config.json"),
            field: field.to_owned(),
            message: "missing (this architecture needs it)".into(),
        })
    }

    /// Tensor `name` as `kind` on `device`, after checking its shape.
    pub fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        device: Device,
        kind: Kind,
    ) -> Result<Tensor> {
        let &i = self.index.get(name).ok_or_else(|| {
            ModelError::Config(format!("{}: no tensor `{name}`", self.dir.display()))
        })?;
        let (path, bytes) = &self.files[i];
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(path, e))?;
        let view = st.tensor(name).map_err(|e| bad(path, e))?;
        if view.shape() != shape {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: shape.iter().map(|&d| d as i64).collect(),
                found: view.shape().iter().map(|&d| d as i64).collect(),
            });
        }
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            other => {
                return Err(bad(
                    path,
                    format!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
                ));
            }
        };
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::from_slice(&values)
            .view(dims.as_slice())
            .to_device(device)
            .to_kind(kind))
    }
}
