//! Automated interpretation of dictionary features.
//!
//! This crate will own explaining features with a language model (the bundled model through
//! `saescope-activations`, or any OpenAI-compatible server over HTTP), scoring those
//! explanations against held-out examples with controls, and exporting explanation datasets
//! into the dictionary directory's `explanations/` and `scores/`
//! (`saescope_store::dictionary::DictDir`). It reads features and their contexts from the
//! feature store that `saescope-analysis` writes; it does not compute features, and it does not
//! depend on the learners. Nothing is implemented here yet.
