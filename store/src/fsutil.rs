//! Small file-system helpers that make every write atomic: data goes to `NAME.tmp`, is synced,
//! and is renamed over `NAME` only when complete, so a crash never leaves a half-written file
//! under a name that the reader trusts.

use crate::error::{Result, StoreError};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The temporary name a file is written under before it is renamed into place.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Syncs a directory so that a rename inside it survives a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_via(path, &tmp_path(path), bytes)
}

/// [`write_atomic`] through a temporary name of this process's own, for a file that several
/// processes may write at once with the same content (the last parts of a harvest to finish).
pub(crate) fn write_atomic_shared(path: &Path, bytes: &[u8]) -> Result<()> {
    // Processes on different machines (or in containers) may share a process id; the time
    // keeps their names apart.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}-{nanos}.tmp", std::process::id()));
    write_atomic_via(path, &path.with_file_name(name), bytes)
}

fn write_atomic_via(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp.to_owned();
    let mut f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| StoreError::io(&tmp, e))?;
    drop(f);
    rename_synced(&tmp, path)
}

/// Copies `from` to `to` atomically, as [`write_atomic`] writes.
pub(crate) fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = tmp_path(to);
    std::fs::copy(from, &tmp).map_err(|e| StoreError::io(from, e))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(&tmp, e))?;
    rename_synced(&tmp, to)
}

/// Renames the complete temporary file `tmp` over `path`, then syncs the directory.
fn rename_synced(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(|e| StoreError::io(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// SHA-256 of a file, streamed in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| StoreError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A writer that hashes and counts what passes through it, so a shard's checksum is known the
/// moment it is written, without reading it back.
pub(crate) struct HashingWriter {
    inner: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl HashingWriter {
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).map_err(|e| StoreError::io(path, e))?;
        Ok(HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, f),
            hasher: Sha256::new(),
            bytes: 0,
        })
    }

    /// Flushes and syncs the file; returns (bytes written, hex sha256).
    pub(crate) fn finish(self, path: &Path) -> Result<(u64, String)> {
        let f = self
            .inner
            .into_inner()
            .map_err(|e| StoreError::io(path, e.into_error()))?;
        f.sync_all().map_err(|e| StoreError::io(path, e))?;
        Ok((self.bytes, hex::encode(self.hasher.finalize())))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The lock file a writer holds in the directory it writes.
pub const LOCK_FILE: &str = ".saescope-lock";

/// Takes the exclusive lock on `dir` (created if needed) that every writer of a run, a part of
/// one or a dictionary holds while it writes, so that a second process (a job re-submitted while
/// the first still runs) is refused instead of writing the same files. The operating system
/// releases it when the process ends, however it ends.
pub fn lock_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_directory_refuses_a_second_writer_until_the_first_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        let err = lock_dir(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains("another process is writing"),
            "{err}"
        );
        drop(first);
        lock_dir(dir.path()).unwrap();
    }
}
