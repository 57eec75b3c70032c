//! saescope's own CPU kernels, for the shapes where libtorch's are slow.
//!
//! This crate owns [`linear`] and [`affine`]: x Wᵀ (+ b) with a path of its own for the few-row products of
//! decoding and of encoding a token or two with a dictionary. It sits below every crate that
//! runs tensors and knows nothing of models, dictionaries or files; anything libtorch already
//! does well stays with libtorch.

pub mod linear;

pub use linear::{affine, linear};
