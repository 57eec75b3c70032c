//! Automated interpretation of dictionary features.
//!
//! This crate will own explaining features with a language model (local, or any OpenAI-compatible
//! server), scoring those explanations, and exporting explanation datasets. It reads features and
//! their contexts from the feature store that `saescope-sae` writes; it does not compute features
//! itself. Nothing is implemented here yet.
