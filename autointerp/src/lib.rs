//! Automated interpretation of dictionary features.
//!
//! This crate owns explaining features with a language model (the bundled model through
//! `saescope-activations`, or any OpenAI-compatible server over HTTP), scoring those
//! explanations against held-out examples with controls, and exporting explanation datasets
//! into the dictionary directory's `explanations/` and `scores/`
//! (`saescope_store::dictionary::DictDir`). It reads features and their contexts from the
//! feature store that `saescope-analysis` writes; it does not compute features, and it runs a
//! dictionary only through `saescope-analysis`, never the learners directly.
//!
//! It has the way to a server, [`client`] (a blocking OpenAI-compatible chat client with
//! retries, a concurrency limit and a response cache, over the wire types in [`wire`]), the
//! bundled model as an explainer ([`local`]), the explainer's prompt from example windows and
//! the parsing of its answer ([`prompt`]), the output-side prompt from what a latent does when
//! pushed ([`output`]), and the loop that explains latents into `explanations.parquet`
//! ([`explain`]). The example windows and the pushes are made by `saescope-analysis`, which runs
//! the dictionary in its model. Scoring ([`score`]) puts explanations and their controls to a
//! chat model (detection, fuzzing, simulation), a sentence encoder (embedding) or a model that
//! reads text teacher-forced ([`read`]: simulation all at once, surprisal, intervention)
//! against each latent's held-out test windows; the metrics and the run's summary
//! ([`metrics`], [`score::summary`]) live in `saescope-stats`, shared with the explorer. Every
//! error type is in [`error`].

pub mod client;
pub mod error;
pub mod explain;
pub mod local;
pub mod output;
pub mod prompt;
pub mod read;
pub mod score;
pub mod wire;

pub use client::{ChatReply, ChatRequest, Client, ServerConfig, TokenLogprob};
pub use error::ClientError;
/// The metrics live with the summary in `saescope-stats`, which the explorer shares.
pub use saescope_stats::metrics;
pub use wire::Message;
