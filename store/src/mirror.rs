//! A directory on object storage worked on through a local copy. Dictionaries and feature
//! stores are small and written file by file, by code that expects a folder: [`Mirror::open`]
//! fetches what is there (a checkpoint to resume from, a dictionary to analyse), and
//! [`Mirror::push`] sends back what changed. For a local path both are no-ops.
//!
//! The copy keeps a record (`.saescope-sync.json`) of what it last had in common with the
//! bucket: each file's ETag there, and its size and modification time here. Changes are found
//! by those, not by size (a new checkpoint has the size of the old one), and only files the
//! record knows are ever deleted on either side: another machine's new files in the bucket, and
//! another process's unsent files (or lock) in the copy, are left alone.

use crate::error::{Result, StoreError};
use crate::remote::{Remote, is_url};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

/// The record's file name inside the copy.
const RECORD_FILE: &str = ".saescope-sync.json";

/// A directory on object storage, and the local copy commands work in.
#[derive(Debug)]
pub struct Mirror {
    local: PathBuf,
    remote: Option<Remote>,
    record: Mutex<Record>,
}

/// What the copy last had in common with the bucket, by relative path.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    files: BTreeMap<String, Synced>,
}

/// One file as last synced: the object's ETag, and the local file's size and mtime then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Synced {
    e_tag: Option<String>,
    size: u64,
    mtime_ns: u128,
}

/// The size and modification time of a local file, or `None` if it is absent.
fn stamp(path: &Path) -> Result<Option<(u64, u128)>> {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mtime = m
                .modified()
                .map_err(|e| StoreError::io(path, e))?
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            Ok(Some((m.len(), mtime)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Files that are the copy's own business: the lock, the record, temporary names.
fn private(rel: &str) -> bool {
    rel.split('/')
        .any(|p| p == crate::LOCK_FILE || p == RECORD_FILE || p.ends_with(".tmp"))
}

impl Synced {
    /// The local file at `path` as it is now, in sync with the object tagged `e_tag`.
    fn now(path: &Path, e_tag: Option<String>) -> Result<Synced> {
        let (size, mtime_ns) = stamp(path)?.ok_or_else(|| {
            StoreError::io(path, std::io::Error::from(std::io::ErrorKind::NotFound))
        })?;
        Ok(Synced {
            e_tag,
            size,
            mtime_ns,
        })
    }

    fn unchanged_at(&self, path: &Path) -> Result<bool> {
        Ok(stamp(path)? == Some((self.size, self.mtime_ns)))
    }
}

impl Mirror {
    /// Opens `dir`: a local path as itself, a URL through a copy in `SAESCOPE_CACHE` (default
    /// `~/.cache/saescope`) under `remote/SCHEME/BUCKET/PREFIX`, brought up to date first.
    pub fn open(dir: &Path) -> Result<Mirror> {
        if !is_url(dir) {
            return Ok(Mirror {
                local: dir.to_owned(),
                remote: None,
                record: Mutex::default(),
            });
        }
        let remote = Remote::open(dir)?;
        remote.check()?;
        let (scheme, rest) = remote.url().split_once("://").expect("a URL");
        let cache = std::env::var_os("SAESCOPE_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/saescope")))
            .unwrap_or_else(std::env::temp_dir);
        let local = cache.join("remote").join(scheme).join(rest);
        std::fs::create_dir_all(&local).map_err(|e| StoreError::io(&local, e))?;
        let mut record: Record = std::fs::read(local.join(RECORD_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let listed = remote.list_tagged("")?;
        let mut fetched = 0;
        for (rel, _, e_tag) in listed.iter().filter(|(rel, _, _)| !private(rel)) {
            let path = local.join(rel);
            let current = match record.files.get(rel) {
                Some(s) => &s.e_tag == e_tag && s.unchanged_at(&path)?,
                None => false,
            };
            if current || !remote.download(rel, &path)? {
                continue;
            }
            record
                .files
                .insert(rel.clone(), Synced::now(&path, e_tag.clone())?);
            fetched += 1;
        }
        // Files synced before and gone from the bucket since go here too, unless changed here.
        let gone: Vec<String> = record
            .files
            .keys()
            .filter(|rel| !listed.iter().any(|(r, _, _)| r == *rel))
            .cloned()
            .collect();
        for rel in gone {
            let path = local.join(&rel);
            if record.files[&rel].unchanged_at(&path)? {
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            }
            record.files.remove(&rel);
        }
        save(&local, &record)?;
        tracing::info!(
            "{}: {fetched} files fetched into {}",
            remote.url(),
            local.display()
        );
        Ok(Mirror {
            local,
            remote: Some(remote),
            record: Mutex::new(record),
        })
    }

    /// The folder to work in.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// Uploads the files changed since the last sync, `last` after the others (the file whose
    /// presence says the directory is complete), then deletes from the bucket the files synced
    /// before that the copy no longer has (a checkpoint removed at the end of training).
    /// Returns how many files were sent.
    pub fn push(&self, last: Option<&str>) -> Result<usize> {
        let Some(remote) = &self.remote else {
            return Ok(0);
        };
        let mut record = self.record.lock().expect("no panic while holding the lock");
        let mut files = Vec::new();
        collect_files(&self.local, &self.local, &mut files)?;
        files.retain(|rel| !private(rel));
        files.sort_by_key(|rel| Some(rel.as_str()) == last);
        let mut sent = 0;
        for rel in &files {
            let path = self.local.join(rel);
            if let Some(s) = record.files.get(rel)
                && s.unchanged_at(&path)?
            {
                continue;
            }
            if stamp(&path)?.is_none() {
                continue; // removed since it was listed
            }
            // Stamped before the upload: a write during it is sent again next time.
            let mut synced = Synced::now(&path, None)?;
            synced.e_tag = remote.upload(&path, rel)?.e_tag;
            record.files.insert(rel.clone(), synced);
            sent += 1;
        }
        let gone: Vec<String> = record
            .files
            .keys()
            .filter(|rel| !files.contains(*rel))
            .cloned()
            .collect();
        for rel in gone {
            remote.delete(&rel)?;
            record.files.remove(&rel);
        }
        save(&self.local, &record)?;
        Ok(sent)
    }
}

fn save(local: &Path, record: &Record) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).expect("a record serializes");
    crate::fsutil::write_atomic(&local.join(RECORD_FILE), &json)
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root)
            && let Some(rel) = rel.to_str()
        {
            out.push(rel.to_owned());
        }
    }
    Ok(())
}
