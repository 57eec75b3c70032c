use std::path::PathBuf;

/// Everything that can go wrong reading or writing a run. Each variant names the file involved,
/// because a user with a 200-shard run needs to know which one to regenerate.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a saescope run (no manifest.json); harvest into it first or check the path"
    )]
    NotARun { path: PathBuf },
    #[error("{path}: invalid manifest at `{field}`: {message}")]
    Manifest {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error(
        "{path}: manifest format version {found} is not supported (this saescope reads version {supported})"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: file is missing (the manifest lists it for shard {shard})")]
    MissingFile { path: PathBuf, shard: u32 },
    #[error(
        "{path}: {actual} bytes on disk, but the manifest says {expected} (truncated or overwritten)"
    )]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{path}: sha256 is {actual}, but the manifest says {expected} (the file is corrupted or was replaced)"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: does not match the manifest: {message}")]
    Schema { path: PathBuf, message: String },
    #[error("{path}: cannot read as Parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: cannot decode Arrow data: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("run {run}: no hook point named `{name}`; this run has: {available}")]
    UnknownHook {
        run: PathBuf,
        name: String,
        available: String,
    },
    #[error(
        "{path}: already holds a run (manifest.json exists); resume it or choose another directory"
    )]
    AlreadyExists { path: PathBuf },
    #[error("{path}: the run is already complete; there is nothing to resume")]
    AlreadyComplete { path: PathBuf },
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
