//! The model runtime and the activation harvester.
//!
//! This crate owns running language models to get their activations: model files (the GGUF
//! container with its quantized tensor types in [`gguf`], Hugging Face safetensors checkpoints in
//! [`hf`]), tokenizers ([`tokenizer`]), the forward passes of the Llama (with Qwen and Mistral),
//! Gemma 2/3, GPT-2 and GPT-NeoX families ([`llama`], [`gemma`], [`gpt2`], [`neox`], sharing
//! [`attention`]; one type for all, and the entry points that open a model, in [`model`]) with
//! named hook points that can be read and replaced ([`hooks`]), the BERT sentence encoder that
//! scores explanations by embedding ([`bert`]), generation beside the model (the
//! [`kv_cache`], the [`sampler`], [`chat`] templates and the loop in [`generate`]), text corpora
//! ([`corpus`]), the bundled model and corpora in saescope's cache ([`assets`]), and the
//! harvester that streams a corpus through a model into an activation run ([`harvest`]). Every
//! error type is in [`error`].
//!
//! It does not own the run's on-disk format (that is `saescope-store`), anything learned from
//! activations (`saescope-sae`), or the analyses that run a dictionary inside a model
//! (`saescope-analysis`).

pub mod assets;
pub mod attention;
pub mod bert;
pub mod chat;
pub mod corpus;
pub mod error;
pub mod gemma;
pub mod generate;
pub mod gguf;
pub mod gpt2;
pub mod harvest;
pub mod hf;
pub mod hooks;
pub mod kv_cache;
pub mod llama;
pub mod model;
pub mod neox;
mod norm;
pub mod parts;
pub mod sampler;
pub mod tokenizer;

pub use error::{AssetError, CorpusError, GgufError, HarvestError, ModelError, TokenizerError};
pub use model::{Compute, Model, TextModel};
