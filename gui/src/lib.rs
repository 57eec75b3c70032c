//! The desktop explorer.
//!
//! This crate will own the egui application that browses a run directory: runs, dictionaries,
//! features, prompts, attention heads and circuits. It only reads what the other crates wrote and
//! calls their query APIs on background threads; no analysis code lives here. Nothing is
//! implemented here yet.
