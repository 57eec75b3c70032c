//! Hugging Face checkpoints: a directory with `config.json` and safetensors weights, either one
//! `model.safetensors` or shards listed in `model.safetensors.index.json`. Pickled `.bin`
//! checkpoints are refused: unpickling can run arbitrary code.

use crate::llama::{ModelError, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// An opened checkpoint: its config and every tensor's file, read on demand.
pub struct HfCheckpoint {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

fn bad(path: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("{}: {message}", path.display()))
}

impl HfCheckpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config_path).map_err(|e| bad(&config_path, e))?)
                .map_err(|e| bad(&config_path, e))?;
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index_path.exists() {
            let idx: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&index_path).map_err(|e| bad(&index_path, e))?,
            )
            .map_err(|e| bad(&index_path, e))?;
            let map = idx["weight_map"]
                .as_object()
                .ok_or_else(|| bad(&index_path, "no `weight_map` object"))?;
            let mut files: Vec<PathBuf> = map
                .values()
                .filter_map(|v| v.as_str())
                .map(|f| dir.join(f))
                .collect();
            files.sort();
            files.dedup();
            files
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else if dir.join("pytorch_model.bin").exists() {
            return Err(bad(
                dir,
                "only a pickled pytorch_model.bin is here; saescope does not unpickle (it can run code). \
                 Convert it: in Python, `model.save_pretrained(dir, safe_serialization=True)`",
            ));
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

    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A config value as an integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.config[key]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| {
                bad(
                    &self.dir.join("config.json"),
                    format!("`{key}` is missing or not an integer"),
                )
            })
    }

    pub fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.config[key].as_f64().unwrap_or(default)
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
