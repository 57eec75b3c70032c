use std::path::PathBuf;

/// Everything that can go wrong reading or writing a run. Each variant names the file involved,
/// because a user with a 200-shard run needs to know which one to regenerate.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory could not be opened, read, written, synced or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory at fault.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A directory opened as a run has no `manifest.json`.
    #[error(
        "{path}: not a saescope run (no manifest.json); harvest into it first or check the path"
    )]
    NotARun {
        /// The directory that was opened.
        path: PathBuf,
    },
    /// `manifest.json` does not parse, or breaks a rule of the format.
    #[error("{path}: invalid manifest at `{field}`: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The field at fault, as a path such as `shards[3].first_token`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A manifest or `summary.json` declares a format version this saescope does not read.
    #[error(
        "{path}: manifest format version {found} is not supported (this saescope reads version {supported})"
    )]
    UnsupportedVersion {
        /// The file that declares it.
        path: PathBuf,
        /// The version the file declares.
        found: u32,
        /// The version this saescope reads.
        supported: u32,
    },
    /// A shard file that the manifest lists is not on disk.
    #[error("{path}: file is missing (the manifest lists it for shard {shard})")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// Index of the shard that lists it.
        shard: u32,
    },
    /// A shard file's size on disk differs from the manifest's: it was truncated or overwritten.
    #[error(
        "{path}: {actual} bytes on disk, but the manifest says {expected} (truncated or overwritten)"
    )]
    SizeMismatch {
        /// The file at fault.
        path: PathBuf,
        /// Size in bytes that the manifest records.
        expected: u64,
        /// Size in bytes on disk.
        actual: u64,
    },
    /// A shard file's SHA-256 differs from the manifest's: it is corrupted or was replaced.
    #[error(
        "{path}: sha256 is {actual}, but the manifest says {expected} (the file is corrupted or was replaced)"
    )]
    Checksum {
        /// The file at fault.
        path: PathBuf,
        /// The hex SHA-256 that the manifest records.
        expected: String,
        /// The hex SHA-256 of the file on disk.
        actual: String,
    },
    /// A file's columns, types, row count or data disagree with the manifest or the format.
    #[error("{path}: does not match the manifest: {message}")]
    Schema {
        /// The file at fault.
        path: PathBuf,
        /// What disagrees, in words.
        message: String,
    },
    /// A file cannot be read or written as Parquet, e.g. an unreadable footer or damaged pages.
    #[error("{path}: cannot read as Parquet: {source}")]
    Parquet {
        /// The file at fault.
        path: PathBuf,
        /// The Parquet library's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Arrow data could not be decoded from a file, or built to be written to one.
    #[error("{path}: cannot decode Arrow data: {source}")]
    Arrow {
        /// The file at fault.
        path: PathBuf,
        /// The Arrow library's error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// A hook point was asked for that the run does not hold.
    #[error("run {run}: no hook point named `{name}`; this run has: {available}")]
    UnknownHook {
        /// The run directory.
        run: PathBuf,
        /// The hook name asked for.
        name: String,
        /// The run's hook names, separated by commas.
        available: String,
    },
    /// `RunWriter::create` was given a directory that already holds a `manifest.json`.
    #[error(
        "{path}: already holds a run (manifest.json exists); resume it or choose another directory"
    )]
    AlreadyExists {
        /// The directory given.
        path: PathBuf,
    },
    /// `RunWriter::resume` was given a run that is already marked complete.
    #[error("{path}: the run is already complete; there is nothing to resume")]
    AlreadyComplete {
        /// The run directory.
        path: PathBuf,
    },
    /// A directory opened as a dictionary has no `cfg.json`.
    #[error("{path}: not a dictionary directory (no cfg.json; `saescope train` writes one)")]
    NotADictionary {
        /// The directory that was opened.
        path: PathBuf,
    },
    /// A JSON file of a dictionary directory does not parse into what saescope expects.
    #[error("{path}: cannot read `{field}`: {message}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The field that did not fit, as a path inside the file (`.` for the whole file).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Another process holds the writer's lock on a directory.
    #[error(
        "{path}: another process is writing here (it holds this lock); wait for it to finish or stop it"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A request to object storage failed, or a URL does not name a place on one.
    #[error("{url}: {message}")]
    Remote {
        /// The object or directory's URL.
        url: String,
        /// What went wrong, in the store's words where they help.
        message: String,
    },
    /// No credentials were found for an object store; the message names the variables.
    #[error("{url}: {message}")]
    Credentials {
        /// The URL that needed them.
        url: String,
        /// Which variable or file is missing (never a value).
        message: String,
    },
    /// A run harvested in parts was opened before its parts were merged into one manifest.
    #[error(
        "{path}: holds the parts of a harvest, not yet merged into one run; merge them with `saescope store merge {path}` once all are complete"
    )]
    Unmerged {
        /// The run directory.
        path: PathBuf,
    },
    /// One part of a run harvested in parts was opened as a run.
    #[error(
        "{path}: is part {index} of {count} of a harvest, not a run; read the merged run it belongs to"
    )]
    PartOfRun {
        /// The part's directory.
        path: PathBuf,
        /// The part's number, from 0.
        index: u32,
        /// How many parts the run has.
        count: u32,
    },
    /// The parts of a run cannot be merged; the message names the part and what is wrong.
    #[error("{run}: cannot merge its parts: {message}")]
    Merge {
        /// The run directory.
        run: PathBuf,
        /// What is wrong, naming the part (and the setting, when parts disagree).
        message: String,
    },
    /// An argument or input is unusable, e.g. a shard index out of range; the message says why.
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

/// The result of this crate's operations; the error is a [`StoreError`] unless given.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
