//! The model runtime and the activation harvester.
//!
//! This crate owns running language models to get their activations: model files (the GGUF
//! container with its quantized tensor types in [`gguf`], Hugging Face safetensors checkpoints in
//! [`hf`]), tokenizers ([`tokenizer`]), the Llama and GPT-2 forward passes ([`llama`], [`gpt2`],
//! one type for both in [`model`]) with named hook points that can be read and replaced
//! ([`hooks`]), text corpora ([`corpus`]), and the harvester that streams a corpus through a model
//! into an activation run ([`harvest`]).
//!
//! It does not own the run's on-disk format (that is `saescope-store`) nor anything learned from
//! activations (that is `saescope-sae`).

pub mod corpus;
pub mod gguf;
pub mod gpt2;
pub mod harvest;
pub mod hf;
pub mod hooks;
pub mod llama;
pub mod model;
pub mod tokenizer;
