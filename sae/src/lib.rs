//! Sparse dictionaries: learning them and measuring their reconstructions.
//!
//! This crate owns the dictionary learners (TopK and BatchTopK SAEs in [`topk`], MP-SAE in
//! [`mpsae`], GBA in [`gba`], SNMF in [`snmf`]; any gradient learner also serves
//! attention-output SAEs on `attn.hook_z`; and [`l1`], a ReLU/L1 dictionary fit full-batch on a
//! small matrix in memory, for circuit discovery's codes), the [`Dictionary`] interface they
//! share, their files ([`format`]: the SAELens v6 layout; SAELens and sparsify files load too),
//! training with its checkpoints ([`train`]), the loss it trains on ([`loss`]) and the data it
//! reads ([`data`]), and the reconstruction metrics ([`metrics`]). The gradient learners
//! compute their own gradients rather than using autograd, so that everything after the
//! encoder's dense matmul costs in proportion to the active latents.
//!
//! It reads activations through `saescope-store`, which also names the dictionary directory's
//! files. It does not run models (`saescope-activations`) or analyse a dictionary inside one
//! (`saescope-analysis`), and it shows nothing: progress goes to observers, results come back
//! as data.

// Doc comments write tensor shapes and indices in brackets ([B, d], w[f]), not as links.
#![allow(rustdoc::broken_intra_doc_links)]

pub mod adam;
pub mod data;
pub mod dictionary;
mod error;
pub mod format;
pub mod gba;
pub mod l1;
pub mod loss;
pub mod metrics;
pub mod mpsae;
pub mod seeded;
pub mod snmf;
pub mod sparse;
pub mod synthetic;
pub mod token_norm;
pub mod topk;
pub mod train;

pub use dictionary::{AnyDictionary, Dictionary};
pub use error::{Result, SaeError};
pub use sparse::SparseCodes;
pub use train::{Method, TrainConfig};
