//! One type for every supported architecture, so the harvester and the analyses need not care
//! which family a model is, and the entry points that open a model file or checkpoint directory:
//! [`Model::load`] for the weights and whatever tokenizer is beside them, [`TextModel::open`] for
//! a model ready to run on text, with the provenance a run manifest records.

use crate::chat::template_from_config;
use crate::error::ModelError;
use crate::gemma::{Gemma, GemmaVersion};
use crate::gguf::Gguf;
use crate::gpt2::Gpt2;
use crate::hf::{HfCheckpoint, refuse_pickled};
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::kv_cache::KvCache;
use crate::llama::Llama;
use crate::neox::Neox;
use crate::tokenizer::TextTokenizer;
use saescope_store::ModelInfo;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A language model of any supported family.
pub enum Model {
    /// Llama, SmolLM2, Qwen2, Qwen3, Mistral.
    Llama(Llama),
    /// GPT-2.
    Gpt2(Gpt2),
    /// Gemma 2 and Gemma 3.
    Gemma(Gemma),
    /// GPT-NeoX and Pythia.
    Neox(Neox),
}

/// The `model_type`s of the Hugging Face checkpoints saescope runs.
pub const HF_ARCHITECTURES: [&str; 8] = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "gpt2",
    "gpt_neox",
];

/// The `general.architecture`s of the GGUF files saescope runs.
pub const GGUF_ARCHITECTURES: [&str; 6] =
    ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "gptneox"];

/// A loaded model with what was found beside it.
pub struct LoadedModel {
    /// The weights.
    pub model: Model,
    /// From the GGUF file's tables, or the checkpoint's `tokenizer.json`; `None` if neither.
    pub tokenizer: Option<TextTokenizer>,
    /// `general.name` of a GGUF file, or `_name_or_path`/the directory name of a checkpoint.
    pub name: String,
}

/// The dtype a model computes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compute {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 weights and matmuls (norms and softmax in f32): about 2x faster on GPUs and on
    /// CPUs with AVX512-BF16.
    Bf16,
}

impl Compute {
    /// The libtorch dtype of the weights.
    pub fn kind(self) -> Kind {
        match self {
            Compute::F32 => Kind::Float,
            Compute::Bf16 => Kind::BFloat16,
        }
    }

    /// `f32` or `bf16`, as run manifests record it.
    pub fn name(self) -> &'static str {
        match self {
            Compute::F32 => "f32",
            Compute::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Compute {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Compute::F32),
            "bf16" => Ok(Compute::Bf16),
            other => Err(ModelError::Config(format!(
                "compute dtype `{other}`: expected f32 or bf16"
            ))),
        }
    }
}

/// The device named `cpu` or `cuda` (the first GPU), refusing CUDA where it is not available.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        "cuda" => Err(ModelError::Device(
            "--device cuda: CUDA is not available (a CPU build, or no GPU; see `saescope doctor`)"
                .into(),
        )),
        other => Err(ModelError::Device(format!(
            "--device {other}: expected cpu or cuda"
        ))),
    }
}

impl Model {
    /// The architecture as the model's source names it: for the Llama family `llama`, `qwen2`,
    /// `qwen3` or `mistral`; otherwise `gpt2`, `gemma2`, `gemma3` or `gpt_neox`.
    pub fn architecture(&self) -> &'static str {
        match self {
            Model::Llama(m) => m.cfg.arch,
            Model::Gpt2(_) => "gpt2",
            Model::Gemma(m) => match m.cfg.version {
                GemmaVersion::Gemma2 => "gemma2",
                GemmaVersion::Gemma3 => "gemma3",
            },
            Model::Neox(_) => "gpt_neox",
        }
    }

    /// Transformer blocks.
    pub fn n_layers(&self) -> usize {
        match self {
            Model::Llama(m) => m.cfg.n_layers,
            Model::Gpt2(m) => m.cfg.n_layers,
            Model::Gemma(m) => m.cfg.n_layers,
            Model::Neox(m) => m.cfg.n_layers,
        }
    }

    /// Tokens in the vocabulary (rows of the unembedding).
    pub fn vocab_size(&self) -> usize {
        match self {
            Model::Llama(m) => m.cfg.vocab,
            Model::Gpt2(m) => m.cfg.vocab,
            Model::Gemma(m) => m.cfg.vocab,
            Model::Neox(m) => m.cfg.vocab,
        }
    }

    /// The device the weights live on and the forward pass runs on.
    pub fn device(&self) -> Device {
        match self {
            Model::Llama(m) => m.device(),
            Model::Gpt2(m) => m.device(),
            Model::Gemma(m) => m.device(),
            Model::Neox(m) => m.device(),
        }
    }

    /// The longest input, in tokens.
    pub fn ctx_len(&self) -> usize {
        match self {
            Model::Llama(m) => m.cfg.ctx_len,
            Model::Gpt2(m) => m.cfg.ctx_len,
            Model::Gemma(m) => m.cfg.ctx_len,
            Model::Neox(m) => m.cfg.ctx_len,
        }
    }

    /// The shape of one token's value at a hook of this kind.
    pub fn hook_shape(&self, kind: HookKind) -> Vec<usize> {
        match self {
            Model::Llama(m) => m.hook_shape(kind),
            Model::Gpt2(m) => m.hook_shape(kind),
            Model::Gemma(m) => m.hook_shape(kind),
            Model::Neox(m) => m.hook_shape(kind),
        }
    }

    /// See [`Llama::unembed_folded`].
    pub fn unembed_folded(&self) -> Tensor {
        match self {
            Model::Llama(m) => m.unembed_folded(),
            Model::Gpt2(m) => m.unembed_folded(),
            Model::Gemma(m) => m.unembed_folded(),
            Model::Neox(m) => m.unembed_folded(),
        }
    }

    /// See [`Llama::to_residual`].
    pub fn to_residual(&self, point: HookPoint) -> Option<Tensor> {
        match self {
            Model::Llama(m) => m.to_residual(point),
            Model::Gpt2(m) => m.to_residual(point),
            Model::Gemma(m) => m.to_residual(point),
            Model::Neox(m) => m.to_residual(point),
        }
    }

    /// See [`Llama::forward`].
    pub fn forward(&self, ids: &Tensor, hooks: &mut Hooks, logits: bool) -> Result<Option<Tensor>> {
        match self {
            Model::Llama(m) => m.forward(ids, hooks, logits),
            Model::Gpt2(m) => m.forward(ids, hooks, logits),
            Model::Gemma(m) => m.forward(ids, hooks, logits),
            Model::Neox(m) => m.forward(ids, hooks, logits),
        }
    }

    /// One generation step on the step's tokens [batch, t] against those in `cache` (see
    /// [`KvCache`]): the logits [batch, t, vocab].
    pub fn forward_cached(
        &self,
        ids: &Tensor,
        hooks: &mut Hooks,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let logits = match self {
            Model::Llama(m) => m.run(ids, hooks, true, Some(cache)),
            Model::Gpt2(m) => m.run(ids, hooks, true, Some(cache)),
            Model::Gemma(m) => m.run(ids, hooks, true, Some(cache)),
            Model::Neox(m) => m.run(ids, hooks, true, Some(cache)),
        }?;
        Ok(logits.expect("logits were asked for"))
    }

    /// Opens a GGUF file, or a Hugging Face checkpoint directory (`config.json` + safetensors),
    /// with its weights in `kind` on `device`.
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<LoadedModel> {
        let model = Self::load_from(path, device, kind);
        // The checkpoint's bytes were read whole and are free now: under
        // `keep_freed_memory` they would stay with the process (a whole checkpoint of host
        // memory for the life of a GPU run), so they go back to the system here.
        saescope_kernels::release_freed_memory();
        model
    }

    fn load_from(path: &Path, device: Device, kind: Kind) -> Result<LoadedModel> {
        refuse_pickled(path)?;
        if path.is_dir() {
            return Self::load_hf(path, device, kind);
        }
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        let g = Gguf::parse(&bytes)?;
        let arch = g.get("general.architecture").and_then(|v| v.as_str());
        let model = match arch {
            Some("gemma2" | "gemma3") => Model::Gemma(Gemma::from_gguf(&g, device, kind)?),
            Some("gptneox") => Model::Neox(Neox::from_gguf(&g, device, kind)?),
            _ => Model::Llama(Llama::from_gguf(&g, device, kind)?),
        };
        let tokenizer = TextTokenizer::from_gguf(&g)?;
        let name = g
            .get("general.name")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| file_name(path, true));
        Ok(LoadedModel {
            model,
            tokenizer: Some(tokenizer),
            name,
        })
    }

    fn load_hf(dir: &Path, device: Device, kind: Kind) -> Result<LoadedModel> {
        let ckpt = HfCheckpoint::open(dir)?;
        let model_type = ckpt.config.model_type.as_deref().unwrap_or("(none)");
        let model = match model_type {
            "llama" | "qwen2" | "qwen3" | "mistral" => {
                Model::Llama(Llama::from_hf(&ckpt, device, kind)?)
            }
            "gemma2" => Model::Gemma(Gemma::from_hf(&ckpt, GemmaVersion::Gemma2, device, kind)?),
            "gemma3_text" => {
                Model::Gemma(Gemma::from_hf(&ckpt, GemmaVersion::Gemma3, device, kind)?)
            }
            "gpt2" => Model::Gpt2(Gpt2::from_hf(&ckpt, device, kind)?),
            "gpt_neox" => Model::Neox(Neox::from_hf(&ckpt, device, kind)?),
            other => return Err(ModelError::UnsupportedArchitecture(other.to_owned())),
        };
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.exists() {
            let mut t = TextTokenizer::from_file(&tokenizer_path)?;
            t.chat_template = template_from_config(&dir.join("tokenizer_config.json"))?;
            Some(t)
        } else {
            None
        };
        let name = ckpt
            .config
            .name_or_path
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| file_name(dir, false));
        Ok(LoadedModel {
            model,
            tokenizer,
            name,
        })
    }
}

fn file_name(path: &Path, stem: bool) -> String {
    let n = if stem {
        path.file_stem()
    } else {
        path.file_name()
    };
    n.unwrap_or_default().to_string_lossy().into_owned()
}

/// A model ready to run on text: the weights, a tokenizer, and where they came from.
pub struct TextModel {
    /// The weights.
    pub model: Model,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Name, architecture, file and its SHA-256, compute dtype: what a run manifest records.
    pub info: ModelInfo,
}

impl TextModel {
    /// Opens a GGUF file or checkpoint directory computing in `compute`; a model without a
    /// tokenizer is refused, since text cannot reach it.
    pub fn open(path: &Path, device: Device, compute: Compute) -> Result<TextModel> {
        refuse_pickled(path)?;
        if !path.exists() {
            return Err(ModelError::NotFound(path.to_owned()));
        }
        let t = Instant::now();
        let loaded = Model::load(path, device, compute.kind())?;
        let Some(tokenizer) = loaded.tokenizer else {
            return Err(ModelError::NoTokenizer(path.to_owned()));
        };
        // A checkpoint directory is identified by its config; a file by its own bytes.
        let hashed = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_owned()
        };
        let sha256 = saescope_store::sha256_file(&hashed)
            .map_err(|e| ModelError::Config(format!("hashing {}: {e}", hashed.display())))?;
        let info = ModelInfo {
            name: loaded.name,
            architecture: Some(loaded.model.architecture().into()),
            file: Some(path.display().to_string()),
            sha256: Some(sha256),
            compute_dtype: Some(compute.name().into()),
        };
        tracing::info!(
            "loaded {} ({}, {} layers) in {:.1} s",
            info.name,
            loaded.model.architecture(),
            loaded.model.n_layers(),
            t.elapsed().as_secs_f64()
        );
        Ok(TextModel {
            model: loaded.model,
            tokenizer,
            info,
        })
    }

    /// The text of each token id of the vocabulary (as the unembedding numbers them).
    pub fn vocabulary(&self) -> Vec<String> {
        (0..self.model.vocab_size() as u32)
            .map(|i| self.tokenizer.decode(&[i]).unwrap_or_default())
            .collect()
    }

    /// A prompt's token ids, BOS first when `bos` is set and the tokenizer has one.
    pub fn prompt_ids(&self, text: &str, bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if bos {
            ids.extend(self.tokenizer.bos);
        }
        ids.extend(self.tokenizer.encode(text)?);
        if ids.is_empty() {
            return Err(ModelError::Config("the prompt has no tokens".into()));
        }
        Ok(ids)
    }
}
