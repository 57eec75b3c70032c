//! saescope's own CPU kernels, for the shapes where libtorch's are slow.
//!
//! This crate owns:
//! - [`linear()`] and [`affine()`]: x Wᵀ (+ b), with a path of its own for the few-row products of
//!   decoding and of encoding a token or two with a dictionary;
//! - [`adam_step_()`]: Adam's update in one pass over memory;
//! - [`row_topk()`] and [`batch_topk()`]: each row's k largest entries (TopK training) and a whole
//!   batch's largest (BatchTopK), the encoder's bias added as they compare;
//! - [`pursue()`] and [`pursue_backward()`]: MP-SAE's matching pursuit and its backward;
//! - [`rms_norm()`] and [`add_rms_norm()`]: a model's RMSNorm in one pass per row (f32 and
//!   bf16), the latter with the residual add before it;
//! - [`silu_mul()`]: the SwiGLU MLP's silu(gate) ⊙ up in one pass;
//! - [`rotate_half()`]: rotary position embeddings read straight from the QKV product;
//! - [`keep_freed_memory()`] and [`release_freed_memory()`]: the allocator settings under which
//!   libtorch's large short-lived tensors stop costing page faults.
//!
//! It sits below every crate that runs tensors and knows nothing of models, dictionaries or
//! files; anything libtorch already does well stays with libtorch.

pub mod adam;
pub mod batch_topk;
#[cfg(test)]
mod close;
pub mod linear;
pub mod memory;
pub mod norm;
mod pool;
pub mod pursuit;
pub mod rope;
mod scan;
pub mod swiglu;
pub mod topk;
mod view;

pub use memory::{keep_freed_memory, release_freed_memory};

pub use adam::{AdamScalars, adam_step_};
pub use batch_topk::{Selected, batch_topk};
pub use linear::{affine, linear};
pub use norm::{add_rms_norm, rms_norm};
pub use pursuit::{Pursued, pursue, pursue_backward};
pub use rope::rotate_half;
pub use swiglu::silu_mul;
pub use topk::row_topk;
