//! Shard files of a run on object storage, downloaded whole into a temporary folder and shared
//! by every reader of the run in this process (training's batches, its held-out set, a second
//! epoch): each file is fetched once, with one request, and hashed as it arrives.

use crate::error::{Result, StoreError};
use crate::remote::{Download, Remote};
use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// The downloaded files of one run, removed when the last reader of the run is gone.
pub(crate) struct ShardCache {
    remote: Remote,
    dir: tempfile::TempDir,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

/// One file: its download while it runs, then its path and SHA-256 (or the error).
struct Entry {
    download: Mutex<Option<Download>>,
    done: OnceLock<std::result::Result<(PathBuf, String), String>>,
}

impl std::fmt::Debug for ShardCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCache")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl ShardCache {
    /// An empty cache for `remote`'s files, in a fresh folder under `TMPDIR`.
    pub(crate) fn new(remote: Remote) -> Result<ShardCache> {
        let dir = tempfile::Builder::new()
            .prefix("saescope-shards-")
            .tempdir()
            .map_err(|e| StoreError::io(std::env::temp_dir(), e))?;
        Ok(ShardCache {
            remote,
            dir,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn entry(&self, rel: &str) -> Arc<Entry> {
        let mut entries = self
            .entries
            .lock()
            .expect("no panic while holding the lock");
        let n = entries.len();
        entries
            .entry(rel.to_owned())
            .or_insert_with(|| {
                let to: PathBuf = self.dir.path().join(format!("{n}.parquet"));
                Arc::new(Entry {
                    download: Mutex::new(Some(self.remote.download_hashed(rel, to))),
                    done: OnceLock::new(),
                })
            })
            .clone()
    }

    /// Starts downloading `rel` unless it is downloading or done.
    pub(crate) fn start(&self, rel: &str) {
        self.entry(rel);
    }

    /// The file `rel`, downloaded (waiting for it), opened for the caller alone (readers on
    /// other threads must not share a file offset), with its SHA-256.
    pub(crate) fn get(&self, rel: &str) -> Result<(File, String)> {
        let entry = self.entry(rel);
        let done = entry.done.get_or_init(|| {
            let download = entry
                .download
                .lock()
                .expect("no panic while holding the lock")
                .take()
                .expect("a download is collected once, by the first to wait");
            download.wait().map_err(|e| match e {
                StoreError::Remote { message, .. } => message,
                e => e.to_string(),
            })
        });
        let (path, sha256) = done.clone().map_err(|message| StoreError::Remote {
            url: self.remote.path_of(rel).display().to_string(),
            message,
        })?;
        let file = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok((file, sha256))
    }
}
