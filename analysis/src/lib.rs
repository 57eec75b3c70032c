//! Analyses of a trained dictionary inside the model it reads.
//!
//! This crate owns opening a dictionary with its run and model on a device ([`session`]), and
//! what runs there: splicing the dictionary into the forward pass ([`splice`], driven over
//! held-out text by [`eval`]: CE-loss recovered, KL), the streaming feature analysis that fills
//! a feature store ([`features`]), the prompt view with attribution by head ([`inspect`]), and
//! steering: generation with features pushed on ([`steer`]), and what autointerp explains and
//! scores from: the example sets ([`examples`]) and what a latent does when pushed
//! ([`effects`]). And circuit discovery: the heads a task needs, ranked by the overlap of a
//! small dictionary's codes and checked against ablating each head ([`circuits`]). And
//! training straight from the model, one forward pass feeding several dictionaries
//! ([`stream`]).
//!
//! It builds on the model runtime (`saescope-activations`), the learners and their files
//! (`saescope-sae`) and the formats (`saescope-store`), and shows nothing: progress goes to
//! callbacks, results come back as data (the prompt view's as `saescope_store::prompt`'s plain
//! types, so the explorer can show them without linking libtorch).

// Doc comments write tensor shapes and indices in brackets ([B, d], w[f]), not as links.
#![allow(rustdoc::broken_intra_doc_links)]

pub mod circuits;
pub mod effects;
mod error;
pub mod eval;
pub mod examples;
pub mod features;
pub mod inspect;
pub mod session;
pub mod splice;
pub mod steer;
pub mod stream;

pub use error::{AnalysisError, Result};
pub use session::{OpenedDictionary, Session, SessionSpec};
