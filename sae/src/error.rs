use std::path::{Path, PathBuf};

/// Everything that can go wrong in this crate: reading files, their contents, settings, data.
#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    /// A filesystem operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A file (dictionary config, weights, checkpoint) is malformed or does not fit the data.
    #[error("{path}: {message}")]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Settings that are invalid, need more memory than is free, or clash with files on disk.
    #[error("config: {0}")]
    Config(String),
    /// The data cannot serve: too few rows for a batch, nothing held out, nothing to resume.
    #[error("{0}")]
    Data(String),
    /// An error from `saescope-store`, reading a run of activations or its files.
    #[error(transparent)]
    Store(#[from] saescope_store::StoreError),
    /// A libtorch operation failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// Tensors could not be serialised as safetensors (read errors are [`SaeError::Format`]).
    #[error("safetensors: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
}

impl SaeError {
    /// An [`SaeError::Io`] for `path`, taking an owned copy of the path.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        SaeError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// This crate's result type, with [`SaeError`] as the default error.
pub type Result<T, E = SaeError> = std::result::Result<T, E>;
