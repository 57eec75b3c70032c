//! Statistics of explanation scores.
//!
//! This crate owns the numbers made from scorers' answers: confusion counts and their rates,
//! AUC by mid-ranks, Pearson's and Spearman's correlations and percentile bootstrap intervals ([`metrics`]),
//! and a run's summary of its scores table, per scorer and control, with intervals
//! ([`summary`]). It reads rows of `scores.parquet` as `saescope-store` defines them; it asks
//! no model and does not link libtorch, so the command line (through `saescope-autointerp`)
//! and the explorer print and show the same summary.

pub mod metrics;
pub mod summary;
