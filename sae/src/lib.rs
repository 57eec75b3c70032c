//! Sparse dictionaries and what is measured with them.
//!
//! This crate will own the dictionary learners (TopK and BatchTopK SAEs, MP-SAE, GBA, SNMF, and
//! attention-output SAEs), their checkpoints, the reconstruction metrics, evaluation by splicing a
//! reconstruction into the model, per-feature analysis and circuit discovery. It reads activations
//! through `saescope-store` and runs models through `saescope-activations`; it does not own either
//! format or the model runtime. Nothing is implemented here yet.
