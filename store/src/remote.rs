//! Runs, dictionaries and feature stores on object storage: `s3://`, `gs://` and `az://` URLs,
//! through the `object_store` crate.
//!
//! A remote directory is named by its URL everywhere a local one is named by its path: the URL
//! travels as a `Path` (`Path::new("s3://bucket/run")` keeps its text), so errors name it and
//! `join` builds the URLs of the files inside. [`is_url`] tells the two apart.
//!
//! Credentials come from the environment and the usual profile files, checked before the first
//! request: a missing one is named by its variable rather than failing later as a timeout of the
//! cloud's metadata service. No value is ever printed. `object_store` is async; the store drives
//! it from a small tokio runtime of its own, so callers stay synchronous.

use crate::error::{Result, StoreError};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart};
use std::future::Future;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The URL schemes saescope reads and writes.
pub const SCHEMES: [&str; 5] = ["s3", "s3a", "gs", "az", "abfs"];

/// Files above this size are uploaded in parts, several at once.
const MULTIPART_BYTES: usize = 16 << 20;

/// Whether `path` names object storage (`s3://…`, `gs://…`, `az://…`) rather than a local path.
pub fn is_url(path: &Path) -> bool {
    path.to_str()
        .and_then(|s| s.split_once("://"))
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme))
}

/// The runtime that drives `object_store`'s futures for the whole process.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("saescope-remote")
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
    })
}

/// Runs `f` to completion on the store's runtime. Must not be called from inside it.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// A directory on object storage: a store and a prefix in it.
#[derive(Clone)]
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

/// The version of an object as last written or read, for a conditional update.
pub type Version = UpdateVersion;

/// How a put treats an object already at the key.
#[derive(Clone, Debug)]
pub enum Commit {
    /// Replace it.
    Overwrite,
    /// Refuse if there is one: [`StoreError::AlreadyExists`].
    Create,
    /// Replace it only if it is still at this version: another writer's change is refused.
    Update(Version),
}

impl Remote {
    /// Opens the directory `url` names, with credentials from the environment.
    pub fn open(url: &Path) -> Result<Remote> {
        let text = url
            .to_str()
            .ok_or_else(|| StoreError::InvalidInput(format!("{}: not UTF-8", url.display())))?;
        let url_text = text.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&url_text).map_err(|e| StoreError::Remote {
            url: url_text.clone(),
            message: format!("not a storage URL: {e}"),
        })?;
        let bucket = parsed.host_str().unwrap_or_default().to_owned();
        if bucket.is_empty() {
            return Err(StoreError::Remote {
                url: url_text,
                message: "names no bucket (write s3://BUCKET/PREFIX)".into(),
            });
        }
        let store = crate::credentials::build(parsed.scheme(), &bucket, &url_text)?;
        let prefix =
            ObjPath::parse(parsed.path().trim_matches('/')).map_err(|e| StoreError::Remote {
                url: url_text.clone(),
                message: format!("not a valid object path: {e}"),
            })?;
        Ok(Remote {
            url: url_text,
            store,
            prefix,
        })
    }

    /// The directory's URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `rel` inside the directory, as a path (for errors and for [`Remote::open`]).
    pub fn path_of(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("{}/{rel}", self.url))
    }

    fn key(&self, rel: &str) -> ObjPath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |k, part| k.child(part))
    }

    fn error(&self, rel: &str, e: object_store::Error) -> StoreError {
        let url = if rel.is_empty() {
            self.url.clone()
        } else {
            format!("{}/{rel}", self.url)
        };
        let text = e.to_string();
        let message = if text.contains("NoSuchBucket") || text.contains("ContainerNotFound") {
            let bucket = self.url.split("://").nth(1).unwrap_or("").split('/').next();
            format!("the bucket `{}` does not exist", bucket.unwrap_or(""))
        } else {
            // The store's own error code (`AccessDenied`, `InvalidAccessKeyId`) says more than
            // the response around it.
            let code = text
                .split_once("<Code>")
                .and_then(|(_, rest)| rest.split_once("</Code>"))
                .map_or("", |(code, _)| code);
            match e {
                object_store::Error::PermissionDenied { .. } => format!(
                    "permission denied ({code}): the credentials in use may not do this here"
                ),
                object_store::Error::Unauthenticated { .. } => {
                    format!("the store refused the credentials ({code})")
                }
                _ => text,
            }
        };
        StoreError::Remote { url, message }
    }

    /// Checks that the bucket exists and can be listed: a cheap first request that turns a wrong
    /// bucket or refused credentials into an error before any work is done.
    pub fn check(&self) -> Result<()> {
        block_on(self.store.list_with_delimiter(Some(&self.prefix)))
            .map(|_| ())
            .map_err(|e| self.error("", e))
    }

    /// The object `rel`, or `None` when there is none.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        Ok(self.get_versioned(rel)?.map(|(b, _)| b))
    }

    /// The object `rel` with its version, or `None` when there is none.
    pub fn get_versioned(&self, rel: &str) -> Result<Option<(Bytes, Version)>> {
        block_on(async {
            let got = match self.store.get(&self.key(rel)).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let version = Version {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            Ok(Some((got.bytes().await?, version)))
        })
        .map_err(|e| self.error(rel, e))
    }

    /// The size of object `rel`, or `None` when there is none.
    pub fn size(&self, rel: &str) -> Result<Option<u64>> {
        match block_on(self.store.head(&self.key(rel))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// The version of object `rel` now, or `None` when there is none.
    pub fn version(&self, rel: &str) -> Result<Option<Version>> {
        match block_on(self.store.head(&self.key(rel))) {
            Ok(meta) => Ok(Some(Version {
                e_tag: meta.e_tag,
                version: meta.version,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// The last `n` bytes of object `rel` (all of it if shorter) and its size, in one request;
    /// `None` when there is no such object.
    pub fn tail(&self, rel: &str, n: u64) -> Result<Option<(Bytes, u64)>> {
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Suffix(n)),
            ..Default::default()
        };
        let key = self.key(rel);
        block_on(async {
            let got = match self.store.get_opts(&key, opts).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                // Azure takes no suffix range: the size first, then the range.
                Err(object_store::Error::NotSupported { .. }) => {
                    let size = match self.store.head(&key).await {
                        Ok(m) => m.size,
                        Err(object_store::Error::NotFound { .. }) => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    let bytes = self
                        .store
                        .get_range(&key, size.saturating_sub(n)..size)
                        .await?;
                    return Ok(Some((bytes, size)));
                }
                Err(e) => return Err(e),
            };
            let size = got.meta.size;
            Ok(Some((got.bytes().await?, size)))
        })
        .map_err(|e| self.error(rel, e))
    }

    /// Starts fetching a byte range of `rel` on the runtime; [`Transfer::wait`] collects it.
    pub(crate) fn fetch(&self, rel: &str, range: Range<u64>) -> Fetch {
        let (store, key) = (self.store.clone(), self.key(rel));
        Transfer::spawn(self, rel, async move { store.get_range(&key, range).await })
    }

    /// Starts hashing the whole object `rel` on the runtime (SHA-256, hex), as it streams in.
    pub(crate) fn fetch_sha256(&self, rel: &str) -> HashFetch {
        let (store, key) = (self.store.clone(), self.key(rel));
        Transfer::spawn(self, rel, async move {
            stream_hashed(store.as_ref(), &key, |_| Ok(())).await
        })
    }

    /// Starts downloading the whole object `rel` into the local file `to` on the runtime,
    /// hashing it (SHA-256, hex) as it arrives; [`Transfer::wait`] collects it.
    pub(crate) fn download_hashed(&self, rel: &str, to: PathBuf) -> Download {
        let (store, key) = (self.store.clone(), self.key(rel));
        Transfer::spawn(self, rel, async move {
            use std::io::Write;
            let local = |e: std::io::Error| object_store::Error::Generic {
                store: "local file",
                source: Box::new(e),
            };
            let file = std::fs::File::create(&to).map_err(local)?;
            let mut file = std::io::BufWriter::with_capacity(4 << 20, file);
            let sha256 = stream_hashed(store.as_ref(), &key, |chunk| file.write_all(chunk)).await?;
            file.flush().map_err(local)?;
            Ok((to, sha256))
        })
    }

    /// Writes `bytes` to `rel` in one request, as `mode` says; returns the new version.
    pub fn put(&self, rel: &str, bytes: Vec<u8>, mode: Commit) -> Result<Version> {
        let opts = PutOptions {
            mode: match mode {
                Commit::Overwrite => PutMode::Overwrite,
                Commit::Create => PutMode::Create,
                Commit::Update(v) => PutMode::Update(v),
            },
            ..Default::default()
        };
        match block_on(
            self.store
                .put_opts(&self.key(rel), PutPayload::from(bytes), opts),
        ) {
            Ok(r) => Ok(Version {
                e_tag: r.e_tag,
                version: r.version,
            }),
            Err(object_store::Error::AlreadyExists { .. }) => Err(StoreError::AlreadyExists {
                path: self.path_of(rel),
            }),
            Err(object_store::Error::Precondition { .. }) => Err(self.changed(rel)),
            Err(e) => Err(self.error(rel, e)),
        }
    }

    /// The error for an object another writer has changed under this one.
    pub(crate) fn changed(&self, rel: &str) -> StoreError {
        StoreError::Remote {
            url: format!("{}/{rel}", self.url),
            message: "another process changed it since this one read it (two writers of one run?); stopped so as not to overwrite its work".into(),
        }
    }

    /// Uploads the local file `from` to `rel`: large files in parts, several in flight. The
    /// object appears whole or not at all.
    pub fn upload(&self, from: &Path, rel: &str) -> Result<Version> {
        let mut file = std::fs::File::open(from).map_err(|e| StoreError::io(from, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(from, e))?.len() as usize;
        if len <= MULTIPART_BYTES {
            let mut bytes = Vec::with_capacity(len);
            file.read_to_end(&mut bytes)
                .map_err(|e| StoreError::io(from, e))?;
            return self.put(rel, bytes, Commit::Overwrite);
        }
        let key = self.key(rel);
        block_on(async {
            let upload = self.store.put_multipart(&key).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, MULTIPART_BYTES);
            let mut buf = vec![0u8; MULTIPART_BYTES];
            let sent: object_store::Result<()> = async {
                loop {
                    let n = read_full(&mut file, &mut buf).map_err(|e| {
                        object_store::Error::Generic {
                            store: "local file",
                            source: Box::new(e),
                        }
                    })?;
                    if n == 0 {
                        return Ok(());
                    }
                    w.wait_for_capacity(4).await?;
                    w.write(&buf[..n]);
                }
            }
            .await;
            match sent {
                Ok(()) => w.finish().await,
                Err(e) => {
                    // The parts already sent would stay (and be billed) until aborted.
                    let _ = w.abort().await;
                    Err(e)
                }
            }
        })
        .map(|r| Version {
            e_tag: r.e_tag,
            version: r.version,
        })
        .map_err(|e| self.error(rel, e))
    }

    /// Downloads `rel` to the local file `to` (through a temporary name). Returns false when
    /// there is no such object.
    pub fn download(&self, rel: &str, to: &Path) -> Result<bool> {
        match self.get(rel)? {
            Some(bytes) => {
                if let Some(dir) = to.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
                }
                crate::fsutil::write_atomic(to, &bytes)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Every object under `sub` (recursively), as paths relative to this directory with sizes.
    pub fn list(&self, sub: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_tagged(sub)?
            .into_iter()
            .map(|(rel, size, _)| (rel, size))
            .collect())
    }

    /// [`Remote::list`] with each object's ETag.
    pub fn list_tagged(&self, sub: &str) -> Result<Vec<(String, u64, Option<String>)>> {
        let base = self.key(sub);
        let prefix_len = self.prefix.parts().count();
        let objects: Vec<_> = block_on(self.store.list(Some(&base)).try_collect::<Vec<_>>())
            .map_err(|e| self.error(sub, e))?;
        let mut out: Vec<(String, u64, Option<String>)> = objects
            .into_iter()
            .map(|m| {
                let rel: Vec<String> = m
                    .location
                    .parts()
                    .skip(prefix_len)
                    .map(|p| p.as_ref().to_owned())
                    .collect();
                (rel.join("/"), m.size, m.e_tag)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The names of the folders directly under `sub`.
    pub fn list_dirs(&self, sub: &str) -> Result<Vec<String>> {
        let listed = block_on(self.store.list_with_delimiter(Some(&self.key(sub))))
            .map_err(|e| self.error(sub, e))?;
        let mut out: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes object `rel`; a missing one is not an error.
    pub fn delete(&self, rel: &str) -> Result<()> {
        match block_on(self.store.delete(&self.key(rel))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(rel, e)),
        }
    }
}

/// Streams object `key`, handing each chunk to `each` and hashing it; returns the hex SHA-256.
async fn stream_hashed(
    store: &dyn ObjectStore,
    key: &ObjPath,
    mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> object_store::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut stream = store.get(key).await?.into_stream();
    while let Some(chunk) = stream.try_next().await? {
        h.update(&chunk);
        each(&chunk).map_err(|e| object_store::Error::Generic {
            store: "local file",
            source: Box::new(e),
        })?;
    }
    Ok(hex::encode(h.finalize()))
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A transfer running on the store's runtime in the background: a byte range ([`Fetch`]), a
/// whole object hashed ([`HashFetch`]) or downloaded to a file ([`Download`]).
pub(crate) struct Transfer<T> {
    remote: Remote,
    rel: String,
    task: tokio::task::JoinHandle<object_store::Result<T>>,
}

/// A byte range being fetched.
pub(crate) type Fetch = Transfer<Bytes>;
/// A whole object being hashed: its hex SHA-256.
pub(crate) type HashFetch = Transfer<String>;
/// A whole object being downloaded to a local file: its path and hex SHA-256.
pub(crate) type Download = Transfer<(PathBuf, String)>;

impl<T: Send + 'static> Transfer<T> {
    /// Starts `work` on the runtime; errors will name object `rel` of `remote`.
    fn spawn(
        remote: &Remote,
        rel: &str,
        work: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> Self {
        Transfer {
            remote: remote.clone(),
            rel: rel.to_owned(),
            task: runtime().spawn(work),
        }
    }

    /// Waits for the result.
    pub(crate) fn wait(mut self) -> Result<T> {
        match block_on(&mut self.task) {
            Ok(r) => r.map_err(|e| self.remote.error(&self.rel, e)),
            Err(e) => Err(self.remote.error(&self.rel, e.into())),
        }
    }
}

impl<T> Drop for Transfer<T> {
    /// A transfer nobody waits for any more (the reader stopped) is cancelled.
    fn drop(&mut self) {
        self.task.abort();
    }
}
