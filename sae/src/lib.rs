//! Sparse dictionaries: learning them and measuring them.
//!
//! This crate owns the dictionary learners (TopK and BatchTopK SAEs, MP-SAE, GBA, SNMF; any
//! gradient learner also serves attention-output SAEs on `attn.hook_z`), the [`Dictionary`]
//! interface they share, their on-disk form (SAELens v6 layout; SAELens and sparsify files load
//! too), the training loop with its checkpoints, and the reconstruction metrics. The gradient
//! learners compute their own gradients rather than using autograd, so that everything after the
//! encoder's dense matmul costs in proportion to the active latents.
//!
//! It reads activations through `saescope-store` and does not own that format, the model runtime
//! (`saescope-activations`), or any display: progress goes to an [`train::Observer`].

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
