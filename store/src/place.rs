//! A run directory that is either a local folder or a prefix on object storage, for the few
//! operations the merge of parts and the harvester's checks need on both.

use crate::error::{Result, StoreError};
use crate::remote::{Commit, Remote, is_url};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a run lives.
pub(crate) enum Place {
    Local(PathBuf),
    Remote(Remote),
}

impl Place {
    /// The place `dir` names: a URL opens the object store (checking credentials).
    pub(crate) fn of(dir: &Path) -> Result<Place> {
        Ok(if is_url(dir) {
            Place::Remote(Remote::open(dir)?)
        } else {
            Place::Local(dir.to_owned())
        })
    }

    /// Whether the file `rel` exists.
    pub(crate) fn has(&self, rel: &str) -> Result<bool> {
        match self {
            Place::Local(d) => Ok(d.join(rel).is_file()),
            Place::Remote(r) => Ok(r.size(rel)?.is_some()),
        }
    }

    /// The names of the folders in `rel`; empty when it does not exist.
    pub(crate) fn dirs(&self, rel: &str) -> Result<Vec<String>> {
        match self {
            Place::Local(d) => {
                let dir = d.join(rel);
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(StoreError::io(&dir, e)),
                };
                let mut out = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
                    if entry.path().is_dir() {
                        out.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                out.sort();
                Ok(out)
            }
            Place::Remote(r) => r.list_dirs(rel),
        }
    }

    /// The sizes of the files under `rel`, looked up one by one locally and listed at once
    /// remotely (one request per thousand objects rather than one per file).
    pub(crate) fn sizes(&self, rel: &str) -> Result<Sizes> {
        Ok(match self {
            Place::Local(d) => Sizes::Local(d.clone()),
            Place::Remote(r) => Sizes::Listed(r.list(rel)?.into_iter().collect()),
        })
    }

    /// Writes `bytes` to `rel` unless a file is already there: returns false, writing nothing,
    /// when one is. Locally the file appears whole (a unique temporary name, then a rename).
    pub(crate) fn create(&self, rel: &str, bytes: &[u8]) -> Result<bool> {
        match self {
            Place::Local(d) => {
                if d.join(rel).is_file() {
                    return Ok(false);
                }
                crate::fsutil::write_atomic_shared(&d.join(rel), bytes)?;
                Ok(true)
            }
            Place::Remote(r) => match r.put(rel, bytes.to_vec(), Commit::Create) {
                Ok(_) => Ok(true),
                Err(StoreError::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// The path (or URL) of `rel`, for errors.
    pub(crate) fn path_of(&self, rel: &str) -> PathBuf {
        match self {
            Place::Local(d) => d.join(rel),
            Place::Remote(r) => r.path_of(rel),
        }
    }
}

/// File sizes under a folder; see [`Place::sizes`].
pub(crate) enum Sizes {
    Local(PathBuf),
    Listed(HashMap<String, u64>),
}

impl Sizes {
    /// The size of `rel` (relative to the place, not the folder listed), or `None` if absent.
    pub(crate) fn get(&self, rel: &str) -> Result<Option<u64>> {
        match self {
            Sizes::Local(d) => match std::fs::metadata(d.join(rel)) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::io(d.join(rel), e)),
            },
            Sizes::Listed(m) => Ok(m.get(rel).copied()),
        }
    }
}
