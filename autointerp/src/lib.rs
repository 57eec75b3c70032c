//! Automated interpretation of dictionary features.
//!
//! This crate owns explaining features with a language model (the bundled model through
//! `saescope-activations`, or any OpenAI-compatible server over HTTP), scoring those
//! explanations against held-out examples with controls, and exporting explanation datasets
//! into the dictionary directory's `explanations/` and `scores/`
//! (`saescope_store::dictionary::DictDir`). It reads features and their contexts from the
//! feature store that `saescope-analysis` writes; it does not compute features, and it does not
//! depend on the learners.
//!
//! So far it has the way to a server: [`client`] (a blocking OpenAI-compatible chat client with
//! retries, a concurrency limit and a response cache) over the wire types in [`wire`]; every
//! error type is in [`error`]. Example sets, explainers and scorers come next.

pub mod client;
pub mod error;
pub mod wire;

pub use client::{ChatReply, ChatRequest, Client, ServerConfig, TokenLogprob};
pub use error::ClientError;
pub use wire::Message;
