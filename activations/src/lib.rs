//! The model runtime and the activation harvester.
//!
//! This crate owns running language models to get their activations: the GGUF container
//! ([`gguf`]) with its quantized tensor types, tokenizers ([`tokenizer`]), the Llama forward pass
//! ([`llama`]) with named hook points that can be read and replaced ([`hooks`]), text corpora
//! ([`corpus`]), and the harvester that streams a corpus through a model into an activation run
//! ([`harvest`]). Hugging Face safetensors and the GPT-2 family come next.
//!
//! It does not own the run's on-disk format (that is `saescope-store`) nor anything learned from
//! activations (that is `saescope-sae`).

pub mod corpus;
pub mod gguf;
pub mod harvest;
pub mod hooks;
pub mod llama;
pub mod tokenizer;
