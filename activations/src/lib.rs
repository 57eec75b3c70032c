//! The model runtime and the activation harvester.
//!
//! This crate will own reading language models (GGUF and Hugging Face safetensors, Llama and GPT-2
//! families), their tokenizers, forward passes with named hook points that can be read and
//! replaced, and the harvester that streams a corpus through a model into an activation run.
//! It does not own the run's on-disk format (that is `saescope-store`) nor anything learned from
//! activations (that is `saescope-sae`). Nothing is implemented here yet.
