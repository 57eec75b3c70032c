//! The errors of the analyses: those of the crates they build on, and their own.

use saescope_activations::{AssetError, CorpusError, HarvestError, ModelError, TokenizerError};
use saescope_sae::SaeError;
use saescope_store::StoreError;

/// Why an analysis could not run.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// Reading a run, a dictionary directory or a feature store, or writing one.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Loading the dictionary.
    #[error(transparent)]
    Sae(#[from] SaeError),
    /// Loading or running the model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Tokenizing.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Reading the corpus.
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    /// Packing the corpus into contexts.
    #[error(transparent)]
    Harvest(#[from] HarvestError),
    /// A bundled asset.
    #[error(transparent)]
    Asset(#[from] AssetError),
    /// libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A dictionary that does not fit the model, run or request, naming its directory.
    #[error("{dir}: {message}")]
    Dictionary {
        /// The dictionary's directory.
        dir: std::path::PathBuf,
        /// What does not fit.
        message: String,
    },
    /// Settings or arguments that cannot work.
    #[error("{0}")]
    Config(String),
    /// Data that is not what the analysis needs.
    #[error("{0}")]
    Data(String),
}

/// A result of this crate.
pub type Result<T, E = AnalysisError> = std::result::Result<T, E>;
