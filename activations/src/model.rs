//! One type for every supported architecture, so the harvester and the CLI need not care which
//! family a model is, and one entry point that opens a model file or checkpoint directory.

use crate::gguf::Gguf;
use crate::gpt2::Gpt2;
use crate::hf::HfCheckpoint;
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::llama::{Llama, ModelError, Result};
use crate::tokenizer::TextTokenizer;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub enum Model {
    Llama(Llama),
    Gpt2(Gpt2),
}

/// A loaded model with what was found beside it.
pub struct LoadedModel {
    pub model: Model,
    /// From the GGUF file's tables, or the checkpoint's `tokenizer.json`; `None` if neither.
    pub tokenizer: Option<TextTokenizer>,
    /// `general.name` of a GGUF file, or `_name_or_path`/the directory name of a checkpoint.
    pub name: String,
}

impl Model {
    pub fn architecture(&self) -> &'static str {
        match self {
            Model::Llama(_) => "llama",
            Model::Gpt2(_) => "gpt2",
        }
    }

    pub fn n_layers(&self) -> usize {
        match self {
            Model::Llama(m) => m.cfg.n_layers,
            Model::Gpt2(m) => m.cfg.n_layers,
        }
    }

    pub fn ctx_len(&self) -> usize {
        match self {
            Model::Llama(m) => m.cfg.ctx_len,
            Model::Gpt2(m) => m.cfg.ctx_len,
        }
    }

    /// The shape of one token's value at a hook of this kind.
    pub fn hook_shape(&self, kind: HookKind) -> Vec<usize> {
        match self {
            Model::Llama(m) => m.hook_shape(kind),
            Model::Gpt2(m) => m.hook_shape(kind),
        }
    }

    /// See [`Llama::unembed_folded`].
    pub fn unembed_folded(&self) -> Tensor {
        match self {
            Model::Llama(m) => m.unembed_folded(),
            Model::Gpt2(m) => m.unembed_folded(),
        }
    }

    /// See [`Llama::to_residual`].
    pub fn to_residual(&self, point: HookPoint) -> Option<Tensor> {
        match self {
            Model::Llama(m) => m.to_residual(point),
            Model::Gpt2(m) => m.to_residual(point),
        }
    }

    /// See [`Llama::forward`].
    pub fn forward(&self, ids: &Tensor, hooks: &mut Hooks, logits: bool) -> Result<Option<Tensor>> {
        match self {
            Model::Llama(m) => m.forward(ids, hooks, logits),
            Model::Gpt2(m) => m.forward(ids, hooks, logits),
        }
    }

    /// Opens a GGUF file, or a Hugging Face checkpoint directory (`config.json` + safetensors).
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<LoadedModel> {
        if path.is_dir() {
            let ckpt = HfCheckpoint::open(path)?;
            let model_type = ckpt.config["model_type"]
                .as_str()
                .unwrap_or("(none)")
                .to_owned();
            let model = match model_type.as_str() {
                "llama" | "qwen2" | "mistral" => Model::Llama(Llama::from_hf(&ckpt, device, kind)?),
                "gpt2" => Model::Gpt2(Gpt2::from_hf(&ckpt, device, kind)?),
                other => return Err(ModelError::UnsupportedArchitecture(other.to_owned())),
            };
            let tokenizer_path = path.join("tokenizer.json");
            let tokenizer = if tokenizer_path.exists() {
                Some(
                    TextTokenizer::from_file(&tokenizer_path)
                        .map_err(|e| ModelError::Config(e.to_string()))?,
                )
            } else {
                None
            };
            let name = ckpt.config["_name_or_path"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    path.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                });
            return Ok(LoadedModel {
                model,
                tokenizer,
                name,
            });
        }
        let bytes = std::fs::read(path)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        let g = Gguf::parse(&bytes)?;
        let model = Model::Llama(Llama::from_gguf(&g, device, kind)?);
        let tokenizer =
            TextTokenizer::from_gguf(&g).map_err(|e| ModelError::Config(e.to_string()))?;
        let name = g
            .get("general.name")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                path.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            });
        Ok(LoadedModel {
            model,
            tokenizer: Some(tokenizer),
            name,
        })
    }
}
