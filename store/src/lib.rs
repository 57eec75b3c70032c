//! saescope's on-disk formats.
//!
//! This crate owns the activation run: a directory of Parquet shards plus a `manifest.json`
//! (layout documented in `store/README.md`), its streaming crash-safe [`RunWriter`], and the
//! [`Run`] reader that checks every file against the manifest and serves batches of one hook
//! point's activations as contiguous f32 buffers, optionally shuffled, from a background thread,
//! and the merge of a run harvested in parts ([`parts`]).
//! It also owns the dictionary directory ([`dictionary`]: which file holds what, the typed
//! `cfg.json`, and the training log, metrics and evaluation written beside the weights), the
//! feature store written by `saescope analyze` ([`features`]) and its export to Neuronpedia's
//! dashboard JSON ([`neuronpedia`]), the prompt view's plain data ([`prompt`]), and autointerp's
//! tables: example windows ([`examples`]), explanations ([`explanations`]), their scores
//! ([`scores`]), delphi's layouts
//! ([`delphi`]) and the explanation dataset with its card ([`dataset`]); and circuit
//! discovery's results ([`circuits`]).
//!
//! It does not run models, tokenize text or learn anything: those live in `saescope-activations`,
//! `saescope-sae` and `saescope-analysis`, which read and write through this crate. It does not
//! link libtorch, so the explorer can read everything through it alone.

pub mod circuits;
mod credentials;
pub mod dataset;
pub mod delphi;
pub mod dictionary;
mod error;
pub mod examples;
pub mod explanations;
pub mod features;
mod fsutil;
pub mod manifest;
pub mod mirror;
pub mod neuronpedia;
pub mod parts;
mod place;
pub mod prompt;
mod reader;
pub mod remote;
mod scan;
mod schema;
pub mod scores;
mod shard_cache;
pub mod synthetic;
mod writer;

pub use dictionary::DictDir;
pub use error::{Result, StoreError};
pub use fsutil::{LOCK_FILE, lock_dir, sha256_file, write_atomic};
pub use manifest::{
    BosHandling, Compression, ContextInfo, CorpusInfo, Dtype, FileInfo, HeldoutSplit, HookInfo,
    Layout, Manifest, ModelInfo, PartInfo, RunSpec, ShardInfo, TokenSet, TokenizerInfo,
};
pub use reader::{ActivationBatch, BatchReader, ReadOptions, Run, Shuffle};
pub use scan::Scan;
pub use schema::{CONTEXT_ID, CONTEXT_POS, DOC_ID, DOC_POS, TOKEN_ID, TOKEN_INDEX};
pub use writer::{RunWriter, TokenRecord, WriterOptions};
