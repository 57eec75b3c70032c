use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("config: {0}")]
    Config(String),
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Store(#[from] saescope_store::StoreError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("safetensors: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
}

impl SaeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        SaeError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

pub type Result<T, E = SaeError> = std::result::Result<T, E>;
