//! The model runtime and the activation harvester.
//!
//! This crate owns reading language models: today the GGUF container ([`gguf`]) with its
//! quantized tensor types; next Hugging Face safetensors, tokenizers, the Llama and GPT-2 forward
//! passes with named hook points, and the harvester that streams a corpus through a model into an
//! activation run. It does not own the run's on-disk format (that is `saescope-store`) nor
//! anything learned from activations (that is `saescope-sae`).

pub mod corpus;
pub mod gguf;
pub mod harvest;
pub mod hooks;
pub mod llama;
pub mod tokenizer;
