//! Hugging Face checkpoints: a directory with `config.json` and safetensors weights, either one
//! `model.safetensors` or shards listed in `model.safetensors.index.json`. Pickled checkpoints
//! are refused here, for files and directories alike ([`refuse_pickled`]): unpickling can run
//! arbitrary code.

use crate::error::ModelError;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// The fields of `config.json` that saescope reads, for the Llama family (Llama, Qwen2,
/// Mistral) and GPT-2. Unknown fields are ignored; each architecture checks that the ones it
/// needs are present ([`HfConfig::need`]).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct HfConfig {
    /// `llama`, `qwen2`, `mistral` or `gpt2`.
    pub model_type: Option<String>,
    /// The model's name as transformers saved it.
    #[serde(rename = "_name_or_path")]
    pub name_or_path: Option<String>,
    /// Llama: layers.
    pub num_hidden_layers: Option<usize>,
    /// Llama: model width.
    pub hidden_size: Option<usize>,
    /// Llama: query heads.
    pub num_attention_heads: Option<usize>,
    /// Llama: key/value heads (grouped-query attention; default: the query heads).
    pub num_key_value_heads: Option<usize>,
    /// Llama: head size (default: width / heads).
    pub head_dim: Option<usize>,
    /// Llama: MLP width.
    pub intermediate_size: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: Option<usize>,
    /// Llama: context length.
    pub max_position_embeddings: Option<usize>,
    /// Llama: RMSNorm epsilon (default 1e-6).
    pub rms_norm_eps: Option<f64>,
    /// Llama: RoPE base, older transformers (default 10,000).
    pub rope_theta: Option<f64>,
    /// Llama: RoPE settings, newer transformers.
    pub rope_parameters: Option<RopeParameters>,
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

/// `rope_parameters` in newer transformers' Llama configs.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RopeParameters {
    /// The RoPE base.
    pub rope_theta: Option<f64>,
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
