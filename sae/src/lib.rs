//! Sparse dictionaries: learning them and measuring them.
//!
//! This crate owns the dictionary learners (TopK and BatchTopK SAEs, MP-SAE, GBA, SNMF; any
//! gradient learner also serves attention-output SAEs on `attn.hook_z`), the [`Dictionary`]
//! interface they share, their on-disk form (SAELens v6 layout; SAELens and sparsify files load
//! too), the training loop with its checkpoints, and the reconstruction metrics. The gradient
//! learners compute their own gradients rather than using autograd, so that everything after the
//! encoder's dense matmul costs in proportion to the active latents.
//!
//! It also owns the analyses of a trained dictionary: splicing it into the model
//! ([`splice`]: CE-loss recovered, KL), the streaming feature analysis that fills a feature
//! store ([`analyze`]), and the prompt view with attribution by head ([`inspect`]).
//!
//! It reads activations through `saescope-store` and does not own those formats, the model
//! runtime (`saescope-activations`), or any display: progress goes to observers and callbacks,
//! and results come back as data.

// Doc comments write tensor shapes and indices in brackets ([B, d], w[f]), not as links.
#![allow(rustdoc::broken_intra_doc_links)]

pub mod adam;
pub mod analyze;
pub mod data;
pub mod dictionary;
mod error;
pub mod gba;
pub mod inspect;
pub mod metrics;
pub mod mpsae;
pub mod seeded;
pub mod snmf;
pub mod sparse;
pub mod splice;
pub mod synthetic;
pub mod topk;
pub mod train;

pub use dictionary::{AnyDictionary, Dictionary};
pub use error::{Result, SaeError};
pub use sparse::SparseCodes;
pub use train::{Method, TrainConfig};
