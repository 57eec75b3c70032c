//! Reading runs: validation, integrity checks, and batched, optionally shuffled, prefetched
//! iteration over one hook point's activations.

use crate::error::{Result, StoreError};
use crate::fsutil::sha256_file;
use crate::manifest::{Dtype, FileInfo, HookInfo, Manifest, ShardInfo};
use crate::remote::{Fetch, HashFetch, Remote};
use crate::schema;
use crate::shard_cache::ShardCache;
use crate::writer::TokenRecord;
use arrow::array::{
    Array, AsArray, FixedSizeListArray, Float16Array, Float32Array, UInt32Array, UInt64Array,
};
use arrow::datatypes::{Float16Type, Float32Type, Schema, UInt32Type, UInt64Type};
use bytes::{Buf, Bytes};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// An opened run directory: its validated manifest, and access to its shards.
#[derive(Clone, Debug)]
pub struct Run {
    dir: PathBuf,
    manifest: Manifest,
    /// Where the shards are when the run is on object storage (`dir` is then its URL).
    remote: Option<Remote>,
    /// Its shard files downloaded whole, shared by every reader of the run (and its clones).
    downloaded: Arc<Mutex<Option<Arc<ShardCache>>>>,
}

/// How to iterate a hook point's activations.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Tokens per batch (the last batch may be shorter).
    pub batch_tokens: usize,
    /// Which shards to read (indices into the manifest), e.g. from [`Manifest::split_shards`].
    /// `None` reads all.
    pub shards: Option<Vec<usize>>,
    /// Shuffle across shards with a seeded buffer; `None` reads in token order.
    pub shuffle: Option<Shuffle>,
    /// Batches decoded ahead by the background thread.
    pub prefetch_batches: usize,
    /// Hash each shard's activation file against the manifest before using it. Costs one extra
    /// read of the file (SHA-256 runs at about 1.5-2 GB/s with SHA extensions).
    pub verify_checksums: bool,
    /// For a run on object storage: when the selected shards' activation files hold at most
    /// this many bytes, each is downloaded whole, once, into a temporary local folder (one
    /// request per file, its checksum computed as it arrives, the next files fetched while the
    /// first are read) and read there; a larger selection is read by fetching each row group's
    /// byte range. The folder is `TMPDIR`'s, removed when reading ends. Default: 16 GiB, or
    /// `SAESCOPE_REMOTE_CACHE_GB` GiB (a machine's setting, like `TMPDIR`: its free disk).
    pub remote_cache_bytes: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            batch_tokens: 4096,
            shards: None,
            shuffle: None,
            prefetch_batches: 4,
            verify_checksums: true,
            remote_cache_bytes: std::env::var("SAESCOPE_REMOTE_CACHE_GB")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(16 << 30, |gb| (gb.max(0.0) * (1u64 << 30) as f64) as u64),
        }
    }
}

/// Seeded shuffling: row groups are visited in a random order, and rows pass through a buffer
/// from which they leave at random. The same seed and data give the same order.
#[derive(Clone, Copy, Debug)]
pub struct Shuffle {
    /// Seed of the row-group order and of the buffer's draws.
    pub seed: u64,
    /// Rows held in the shuffle buffer; more mixes better and costs `buffer_tokens * dim * 4` bytes.
    pub buffer_tokens: usize,
}

/// A batch of one hook point's activations, as one contiguous row-major f32 buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivationBatch {
    /// `rows() * dim` values.
    pub data: Vec<f32>,
    /// Values per row: the hook's [`HookInfo::dim`].
    pub dim: usize,
    /// Global token index of each row (joins with the token table).
    pub token_index: Vec<u64>,
}

impl ActivationBatch {
    /// Rows (tokens) in the batch.
    pub fn rows(&self) -> usize {
        self.token_index.len()
    }

    /// Row `i`'s `dim` values. Panics if `i >= self.rows()`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

impl Run {
    /// Opens a run: reads and validates `manifest.json`. Shards are checked when used. One part
    /// of a run harvested in parts is refused: its tokens are a slice of a run, not a run.
    pub fn open(dir: impl AsRef<Path>) -> Result<Run> {
        let run = Self::open_part(dir)?;
        match &run.manifest.part {
            Some(p) => Err(StoreError::PartOfRun {
                path: run.dir,
                index: p.index,
                count: p.count,
            }),
            None => Ok(run),
        }
    }

    /// Opens a run, or one part of a run harvested in parts, to inspect and check its shards.
    pub fn open_part(dir: impl AsRef<Path>) -> Result<Run> {
        let dir = dir.as_ref().to_owned();
        if crate::remote::is_url(&dir) {
            let remote = Remote::open(&dir)?;
            let (manifest, _) = Manifest::load_remote(&remote)?;
            return Ok(Run {
                dir,
                manifest,
                remote: Some(remote),
                downloaded: Arc::default(),
            });
        }
        let manifest = Manifest::load(&dir)?;
        Ok(Run {
            dir,
            manifest,
            remote: None,
            downloaded: Arc::default(),
        })
    }

    /// Whether the run is on object storage.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The run directory, as given to [`Run::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The run's manifest, validated on open.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Looks up a hook point by name; the error lists the ones that exist.
    pub fn hook(&self, name: &str) -> Result<(usize, &HookInfo)> {
        self.manifest
            .hooks
            .iter()
            .enumerate()
            .find(|(_, h)| h.name == name)
            .ok_or_else(|| StoreError::UnknownHook {
                run: self.dir.clone(),
                name: name.to_owned(),
                available: self
                    .manifest
                    .hooks
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn shard(&self, i: usize) -> Result<&ShardInfo> {
        self.manifest.shards.get(i).ok_or_else(|| {
            StoreError::InvalidInput(format!(
                "shard {i} does not exist (the run has {})",
                self.manifest.shards.len()
            ))
        })
    }

    fn open_activations(&self, shard: &ShardInfo, checksums: bool) -> Result<CheckedFile> {
        let expected = schema::activation_schema(&self.manifest.hooks);
        open_checked(
            self.files(),
            shard,
            &shard.activations,
            &expected,
            checksums,
        )
    }

    fn open_tokens(&self, shard: &ShardInfo, checksums: bool) -> Result<CheckedFile> {
        open_checked(
            self.files(),
            shard,
            &shard.tokens,
            &schema::token_schema(),
            checksums,
        )
    }

    /// The cache of whole downloaded shard files, when the run is on object storage and all its
    /// activation files fit in `opts.remote_cache_bytes` (so the cache never holds more).
    fn shard_cache(&self, opts: &ReadOptions) -> Result<Option<Arc<ShardCache>>> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let bytes: u64 = self
            .manifest
            .shards
            .iter()
            .map(|s| s.activations.bytes)
            .sum();
        if bytes > opts.remote_cache_bytes {
            return Ok(None);
        }
        let mut slot = self
            .downloaded
            .lock()
            .expect("no panic while holding the lock");
        if slot.is_none() {
            *slot = Some(Arc::new(ShardCache::new(remote.clone())?));
        }
        Ok(slot.clone())
    }

    fn files(&self) -> Files<'_> {
        match &self.remote {
            Some(r) => Files::Remote(r),
            None => Files::Local(&self.dir),
        }
    }

    /// Fully checks shard `i`: both files present with the right size, a readable Parquet footer,
    /// the schema and row count the manifest promises, and (if `checksums`) their SHA-256.
    pub fn check_shard(&self, i: usize, checksums: bool) -> Result<()> {
        let shard = self.shard(i)?;
        self.open_activations(shard, checksums)?;
        self.open_tokens(shard, checksums)?;
        Ok(())
    }

    /// Reads shard `i`'s token table.
    pub fn read_tokens(&self, i: usize) -> Result<Vec<TokenRecord>> {
        let shard = self.shard(i)?;
        let f = self.open_tokens(shard, false)?;
        let whole = f.chunks(None)?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(whole, f.meta)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|source| StoreError::Parquet {
                path: f.path.clone(),
                source,
            })?;
        let mut out = Vec::with_capacity(shard.rows as usize);
        for batch in reader {
            let b = batch.map_err(|source| StoreError::Arrow {
                path: f.path.clone(),
                source,
            })?;
            let col = |name: &str| {
                b.column_by_name(name).ok_or_else(|| StoreError::Schema {
                    path: f.path.clone(),
                    message: format!("column `{name}` is missing"),
                })
            };
            let ctx = col(schema::CONTEXT_ID)?.as_primitive::<UInt64Type>();
            let pos = col(schema::CONTEXT_POS)?.as_primitive::<UInt32Type>();
            let doc: &UInt64Array = col(schema::DOC_ID)?.as_primitive::<UInt64Type>();
            let dpos: &UInt32Array = col(schema::DOC_POS)?.as_primitive::<UInt32Type>();
            let tok = col(schema::TOKEN_ID)?.as_primitive::<UInt32Type>();
            for r in 0..b.num_rows() {
                out.push(TokenRecord {
                    context_id: ctx.value(r),
                    context_pos: pos.value(r),
                    doc_id: doc.is_valid(r).then(|| doc.value(r)),
                    doc_pos: dpos.is_valid(r).then(|| dpos.value(r)),
                    token_id: tok.value(r),
                });
            }
        }
        Ok(out)
    }

    /// Iterates `hook`'s activations in batches, decoded on a background thread.
    ///
    /// Every selected shard's size, footer, schema and row count are checked before this returns,
    /// so a broken run fails at once rather than hours into training; checksums (if asked) are
    /// verified by the background thread before a shard's first row is used.
    pub fn batches(&self, hook: &str, opts: &ReadOptions) -> Result<BatchReader> {
        let (_, info) = self.hook(hook)?;
        if opts.batch_tokens == 0 {
            return Err(StoreError::InvalidInput(
                "batch size must be positive".into(),
            ));
        }
        if let Some(s) = &opts.shuffle
            && s.buffer_tokens == 0
        {
            return Err(StoreError::InvalidInput(
                "shuffle buffer must hold at least one token".into(),
            ));
        }
        let selected: Vec<usize> = match &opts.shards {
            Some(s) => s.clone(),
            None => (0..self.manifest.shards.len()).collect(),
        };
        let mut shards = Vec::with_capacity(selected.len());
        for &i in &selected {
            let shard = self.shard(i)?;
            let f = self.open_activations(shard, false)?;
            // Columns are found by name: files written by other tools may order them differently.
            let root = f
                .meta
                .schema()
                .index_of(&info.name)
                .map_err(|e| StoreError::Schema {
                    path: f.path.clone(),
                    message: e.to_string(),
                })?;
            let mask = ProjectionMask::roots(f.meta.parquet_schema(), [root]);
            let leaf = f
                .meta
                .parquet_schema()
                .columns()
                .iter()
                .position(|c| c.path().parts().first() == Some(&info.name))
                .ok_or_else(|| StoreError::Schema {
                    path: f.path.clone(),
                    message: format!("no Parquet leaf column under `{}`", info.name),
                })?;
            let mut first = shard.first_token;
            let groups = f
                .meta
                .metadata()
                .row_groups()
                .iter()
                .map(|rg| {
                    let g = (first, rg.num_rows() as usize);
                    first += rg.num_rows() as u64;
                    g
                })
                .collect();
            shards.push(ShardSource {
                file: f,
                rel: shard.activations.path.clone(),
                sha256: shard.activations.sha256.clone(),
                mask,
                leaf,
                groups,
            });
        }
        let plan = Plan {
            shards,
            dim: info.dim(),
            dtype: info.dtype,
            batch_tokens: opts.batch_tokens,
            shuffle: opts.shuffle,
            verify: opts.verify_checksums,
            downloads: self.shard_cache(opts)?,
        };
        let (tx, rx) = sync_channel(opts.prefetch_batches.max(1));
        let handle = std::thread::Builder::new()
            .name("saescope-reader".into())
            .spawn(move || plan.run(&tx))
            .map_err(|e| StoreError::io(&self.dir, e))?;
        Ok(BatchReader {
            rx: Some(rx),
            handle: Some(handle),
        })
    }
}

/// A Parquet file that passed the cheap checks, with its footer parsed.
struct CheckedFile {
    path: PathBuf,
    source: Source,
    /// The file's size in bytes (checked against the manifest).
    size: u64,
    meta: ArrowReaderMetadata,
}

/// Where a run's files are.
#[derive(Clone, Copy)]
enum Files<'a> {
    Local(&'a Path),
    Remote(&'a Remote),
}

/// An opened shard file.
enum Source {
    Local(File),
    /// An object, by its path inside the run.
    Remote {
        remote: Remote,
        rel: String,
    },
}

impl CheckedFile {
    /// The bytes of `range` (the whole file if `None`) as a reader for the Parquet decoders: the
    /// open file itself when local, the range fetched when remote.
    fn chunks(&self, range: Option<Range<u64>>) -> Result<Chunks> {
        match &self.source {
            Source::Local(f) => Ok(Chunks::File(Arc::new(
                f.try_clone().map_err(|e| StoreError::io(&self.path, e))?,
            ))),
            Source::Remote { remote, rel } => {
                let range = range.unwrap_or(0..self.size);
                let data = remote.fetch(rel, range.clone()).wait()?;
                Ok(Chunks::Mem(Arc::new(Window {
                    start: range.start,
                    data,
                    len: self.size,
                })))
            }
        }
    }
}

fn open_checked(
    files: Files<'_>,
    shard: &ShardInfo,
    info: &FileInfo,
    expected: &Arc<Schema>,
    checksum: bool,
) -> Result<CheckedFile> {
    let (path, source, actual, footer) = match files {
        Files::Local(dir) => {
            let path = dir.join(&info.path);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::MissingFile {
                        path,
                        shard: shard.index,
                    });
                }
                Err(e) => return Err(StoreError::io(&path, e)),
            };
            let actual = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
            let footer = Chunks::File(Arc::new(
                file.try_clone().map_err(|e| StoreError::io(&path, e))?,
            ));
            (path, Source::Local(file), actual, footer)
        }
        Files::Remote(remote) => {
            let path = remote.path_of(&info.path);
            // One request gives the size and the footer (almost always within the tail).
            let Some((tail, actual)) = remote.tail(&info.path, FOOTER_GUESS)? else {
                return Err(StoreError::MissingFile {
                    path,
                    shard: shard.index,
                });
            };
            let tail = footer_window(remote, &info.path, tail, actual)?;
            let source = Source::Remote {
                remote: remote.clone(),
                rel: info.path.clone(),
            };
            (path, source, actual, Chunks::Mem(Arc::new(tail)))
        }
    };
    if actual != info.bytes {
        return Err(StoreError::SizeMismatch {
            path,
            expected: info.bytes,
            actual,
        });
    }
    if checksum {
        match &source {
            Source::Local(_) => verify_sha256(&path, &info.sha256)?,
            Source::Remote { remote, rel } => {
                check_sha256(&path, &info.sha256, remote.fetch_sha256(rel).wait()?)?
            }
        }
    }
    let meta = catch_panics(&path, || {
        ArrowReaderMetadata::load(&footer, ArrowReaderOptions::new()).map_err(|source| {
            StoreError::Parquet {
                path: path.clone(),
                source,
            }
        })
    })?;
    if let Some(message) = schema::schema_mismatch(expected, meta.schema()) {
        return Err(StoreError::Schema { path, message });
    }
    if let Some(g) = meta
        .metadata()
        .row_groups()
        .iter()
        .position(|g| g.num_rows() < 0)
    {
        return Err(StoreError::Schema {
            path,
            message: format!("row group {g} has a negative row count"),
        });
    }
    let in_groups: i64 = meta
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .sum();
    let rows = meta.metadata().file_metadata().num_rows();
    if in_groups != rows {
        return Err(StoreError::Schema {
            path,
            message: format!("the footer says {rows} rows, but its row groups hold {in_groups}"),
        });
    }
    if rows < 0 || rows as u64 != shard.rows {
        return Err(StoreError::Schema {
            path,
            message: format!("{rows} rows, but the manifest says {}", shard.rows),
        });
    }
    Ok(CheckedFile {
        path,
        source,
        size: actual,
        meta,
    })
}

/// Bytes fetched from the end of a remote file on open: enough for the footer of a shard with
/// a few thousand row groups.
const FOOTER_GUESS: u64 = 64 << 10;

/// The window over a remote file's end that holds its whole footer: `tail` if it already does,
/// else the footer's exact span, fetched (its length is in the last 8 bytes).
fn footer_window(remote: &Remote, rel: &str, tail: Bytes, size: u64) -> Result<Window> {
    let start = size - tail.len() as u64;
    let n = tail.len();
    let need = if n >= 8 {
        u32::from_le_bytes(tail[n - 8..n - 4].try_into().expect("4 bytes")) as u64 + 8
    } else {
        0
    };
    if need <= tail.len() as u64 || need > size {
        // Either complete, or damaged: the Parquet reader says which, naming the file.
        return Ok(Window {
            start,
            data: tail,
            len: size,
        });
    }
    let data = remote.fetch(rel, size - need..size).wait()?;
    Ok(Window {
        start: size - need,
        data,
        len: size,
    })
}

fn check_sha256(path: &Path, expected: &str, actual: String) -> Result<()> {
    if actual != expected {
        return Err(StoreError::Checksum {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    check_sha256(path, expected, sha256_file(path)?)
}

/// Turns a panic inside a decoder into an error naming the file: a hostile or damaged file must
/// never take the process down.
fn catch_panics<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("decoder panicked");
        Err(StoreError::Schema {
            path: path.to_owned(),
            message: format!("damaged data: {what}"),
        })
    })
}

/// The bytes a Parquet decoder reads: a local file, or the part of a remote one fetched.
#[derive(Clone)]
enum Chunks {
    File(Arc<File>),
    Mem(Arc<Window>),
}

/// A span of a file held in memory. Reading outside it is an error, never a silent request.
struct Window {
    /// Offset of `data` in the file.
    start: u64,
    data: Bytes,
    /// The whole file's length.
    len: u64,
}

impl Window {
    fn slice(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let end = self.start + self.data.len() as u64;
        if start < self.start || start + length as u64 > end {
            return Err(parquet::errors::ParquetError::General(format!(
                "bytes {start}..{} are outside the {}..{end} fetched",
                start + length as u64,
                self.start
            )));
        }
        let from = (start - self.start) as usize;
        Ok(self.data.slice(from..from + length))
    }
}

impl Length for Chunks {
    fn len(&self) -> u64 {
        match self {
            Chunks::File(f) => f.len(),
            Chunks::Mem(w) => w.len,
        }
    }
}

impl ChunkReader for Chunks {
    type T = Box<dyn std::io::Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        match self {
            Chunks::File(f) => Ok(Box::new(f.get_read(start)?)),
            Chunks::Mem(w) => {
                let end = w.start + w.data.len() as u64;
                let rest = w.slice(start, end.saturating_sub(start) as usize)?;
                Ok(Box::new(rest.reader()))
            }
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Chunks::File(f) => f.get_bytes(start, length),
            Chunks::Mem(w) => w.slice(start, length),
        }
    }
}

struct ShardSource {
    file: CheckedFile,
    /// The activation file's path inside the run.
    rel: String,
    sha256: String,
    mask: ProjectionMask,
    /// The hook's leaf column in the Parquet schema.
    leaf: usize,
    /// (first token index, rows) of each row group.
    groups: Vec<(u64, usize)>,
}

/// Row groups kept in flight ahead of the decoder when reading from object storage, and the most
/// bytes they may hold: enough to cover a request's latency at training speed.
const AHEAD_UNITS: usize = 8;
const AHEAD_BYTES: u64 = 256 << 20;

/// Hands the decoder each row group's bytes in plan order. For a run on object storage it keeps
/// the next row groups in flight, so the network works while the decoder and the learner do; a
/// shard's checksum (when asked) streams alongside and is checked before its first row is used.
struct Feed<'a> {
    plan: &'a Plan,
    units: Vec<(usize, usize)>,
    /// Units whose fetch has been started.
    issued: usize,
    /// (fetch, offset, bytes) of units `taken..issued`, in order.
    in_flight: VecDeque<(Fetch, u64, u64)>,
    bytes_in_flight: u64,
    hashes: Vec<Option<HashFetch>>,
    verified: Vec<bool>,
    local: Vec<Option<Chunks>>,
    /// Shards whose whole-file download this reader started and has not used yet.
    pending: VecDeque<usize>,
    /// Units up to which downloads have been considered.
    looked_ahead: usize,
}

impl<'a> Feed<'a> {
    fn new(plan: &'a Plan, units: Vec<(usize, usize)>) -> Self {
        let n = plan.shards.len();
        Feed {
            plan,
            units,
            issued: 0,
            in_flight: VecDeque::new(),
            bytes_in_flight: 0,
            hashes: (0..n).map(|_| None).collect(),
            verified: vec![false; n],
            local: vec![None; n],
            pending: VecDeque::new(),
            looked_ahead: 0,
        }
    }

    /// Unit `k`'s shard, downloaded whole: starts the downloads of the next shards the plan
    /// reads (at most [`AHEAD_FILES`] at once), then waits for this one's and checks its
    /// checksum, computed as it arrived.
    fn take_downloaded(&mut self, k: usize, cache: &ShardCache) -> Result<Chunks> {
        let (s, _) = self.units[k];
        if let Some(c) = &self.local[s] {
            return Ok(c.clone());
        }
        self.looked_ahead = self.looked_ahead.max(k);
        while self.looked_ahead < self.units.len() && self.pending.len() < AHEAD_FILES {
            let (t, _) = self.units[self.looked_ahead];
            if self.local[t].is_none() && !self.pending.contains(&t) {
                cache.start(&self.plan.shards[t].rel);
                self.pending.push_back(t);
            }
            self.looked_ahead += 1;
        }
        let src = &self.plan.shards[s];
        let (file, sha256) = cache.get(&src.rel)?;
        check_sha256(&src.file.path, &src.sha256, sha256)?;
        self.pending.retain(|&t| t != s);
        let chunks = Chunks::File(Arc::new(file));
        self.local[s] = Some(chunks.clone());
        Ok(chunks)
    }

    /// The bytes of unit `k`; units are taken in order, each once.
    fn take(&mut self, k: usize) -> Result<Chunks> {
        let (s, _) = self.units[k];
        let src = &self.plan.shards[s];
        if let Source::Local(_) = &src.file.source {
            if self.plan.verify && !self.verified[s] {
                verify_sha256(&src.file.path, &src.sha256)?;
                self.verified[s] = true;
            }
            if self.local[s].is_none() {
                self.local[s] = Some(src.file.chunks(None)?);
            }
            return Ok(self.local[s].clone().expect("set above"));
        }
        if let Some(cache) = &self.plan.downloads {
            return self.take_downloaded(k, &cache.clone());
        }
        while self.issued < self.units.len() && self.room_for(self.issued, k) {
            self.issue(self.issued);
            self.issued += 1;
        }
        let (fetch, start, len) = self.in_flight.pop_front().expect("unit k was issued");
        self.bytes_in_flight -= len;
        if self.plan.verify && !self.verified[s] {
            let hash = match self.hashes[s].take() {
                Some(h) => h,
                None => self.start_hash(s),
            };
            check_sha256(&src.file.path, &src.sha256, hash.wait()?)?;
            self.verified[s] = true;
        }
        Ok(Chunks::Mem(Arc::new(Window {
            start,
            data: fetch.wait()?,
            len: src.file.size,
        })))
    }

    fn span(&self, k: usize) -> (u64, u64) {
        let (s, g) = self.units[k];
        let src = &self.plan.shards[s];
        src.file
            .meta
            .metadata()
            .row_group(g)
            .column(src.leaf)
            .byte_range()
    }

    /// Whether unit `next` may start now that unit `k` is wanted.
    fn room_for(&self, next: usize, k: usize) -> bool {
        next <= k
            || (self.in_flight.len() < AHEAD_UNITS
                && self.bytes_in_flight + self.span(next).1 <= AHEAD_BYTES)
    }

    fn issue(&mut self, k: usize) {
        let (s, _) = self.units[k];
        let (start, len) = self.span(k);
        let Source::Remote { remote, rel } = &self.plan.shards[s].file.source else {
            unreachable!("only remote units are fetched");
        };
        self.in_flight
            .push_back((remote.fetch(rel, start..start + len), start, len));
        self.bytes_in_flight += len;
        if self.plan.verify && !self.verified[s] && self.hashes[s].is_none() {
            self.hashes[s] = Some(self.start_hash(s));
        }
    }

    fn start_hash(&self, s: usize) -> HashFetch {
        let Source::Remote { remote, rel } = &self.plan.shards[s].file.source else {
            unreachable!("only remote shards are hashed here");
        };
        remote.fetch_sha256(rel)
    }
}

/// Everything the background thread needs.
struct Plan {
    shards: Vec<ShardSource>,
    dim: usize,
    dtype: Dtype,
    batch_tokens: usize,
    shuffle: Option<Shuffle>,
    verify: bool,
    /// For a run on object storage read through whole-file downloads: the run's cache of them.
    downloads: Option<Arc<ShardCache>>,
}

/// Whole files downloading at once, at most, when a remote run is read through downloads.
const AHEAD_FILES: usize = 2;

/// Where decoded rows go: straight into batches, or through the shuffle buffer.
struct Sink<'a> {
    tx: &'a SyncSender<Result<ActivationBatch>>,
    dim: usize,
    batch_tokens: usize,
    out: ActivationBatch,
}

impl Sink<'_> {
    fn new_batch(dim: usize, batch_tokens: usize) -> ActivationBatch {
        ActivationBatch {
            data: Vec::with_capacity(batch_tokens * dim),
            dim,
            token_index: Vec::with_capacity(batch_tokens),
        }
    }

    /// Appends one row; returns false when the consumer has gone away.
    fn push(&mut self, row: &[f32], index: u64) -> bool {
        self.out.data.extend_from_slice(row);
        self.out.token_index.push(index);
        if self.out.token_index.len() == self.batch_tokens {
            return self.send();
        }
        true
    }

    /// Appends consecutive rows (sequential reading), splitting them across batches.
    fn push_rows(&mut self, mut values: &[f32], mut first: u64) -> bool {
        while !values.is_empty() {
            let room = self.batch_tokens - self.out.token_index.len();
            let n = room.min(values.len() / self.dim);
            self.out.data.extend_from_slice(&values[..n * self.dim]);
            self.out.token_index.extend(first..first + n as u64);
            values = &values[n * self.dim..];
            first += n as u64;
            if self.out.token_index.len() == self.batch_tokens && !self.send() {
                return false;
            }
        }
        true
    }

    fn send(&mut self) -> bool {
        let batch = std::mem::replace(&mut self.out, Self::new_batch(self.dim, self.batch_tokens));
        self.tx.send(Ok(batch)).is_ok()
    }

    fn finish(mut self) {
        if !self.out.token_index.is_empty() {
            self.send();
        }
    }
}

impl Plan {
    fn run(self, tx: &SyncSender<Result<ActivationBatch>>) {
        if let Err(e) = self.produce(tx) {
            let _ = tx.send(Err(e));
        }
    }

    fn produce(&self, tx: &SyncSender<Result<ActivationBatch>>) -> Result<()> {
        let mut sink = Sink {
            tx,
            dim: self.dim,
            batch_tokens: self.batch_tokens,
            out: Sink::new_batch(self.dim, self.batch_tokens),
        };
        let mut units: Vec<(usize, usize)> = self
            .shards
            .iter()
            .enumerate()
            .flat_map(|(s, src)| (0..src.groups.len()).map(move |g| (s, g)))
            .collect();
        let mut values = Vec::new();

        let Some(shuffle) = self.shuffle else {
            let mut feed = Feed::new(self, units.clone());
            for (k, &(s, g)) in units.iter().enumerate() {
                let chunks = feed.take(k)?;
                self.decode(s, g, chunks, &mut values)?;
                if !sink.push_rows(&values, self.shards[s].groups[g].0) {
                    return Ok(());
                }
            }
            sink.finish();
            return Ok(());
        };

        let mut rng = ChaCha8Rng::seed_from_u64(shuffle.seed);
        units.shuffle(&mut rng);
        let mut feed = Feed::new(self, units.clone());
        let cap = shuffle.buffer_tokens;
        let mut buf: Vec<f32> = Vec::with_capacity(cap.min(1 << 20) * self.dim);
        let mut buf_index: Vec<u64> = Vec::with_capacity(cap.min(1 << 20));
        let d = self.dim;
        for (k, &(s, g)) in units.iter().enumerate() {
            let chunks = feed.take(k)?;
            self.decode(s, g, chunks, &mut values)?;
            let first = self.shards[s].groups[g].0;
            for (r, row) in values.chunks_exact(d).enumerate() {
                let index = first + r as u64;
                if buf_index.len() < cap {
                    buf.extend_from_slice(row);
                    buf_index.push(index);
                    continue;
                }
                // The buffer is full: a random resident row leaves, the new row takes its place.
                let j = rng.random_range(0..cap);
                if !sink.push(&buf[j * d..(j + 1) * d], buf_index[j]) {
                    return Ok(());
                }
                buf[j * d..(j + 1) * d].copy_from_slice(row);
                buf_index[j] = index;
            }
        }
        // Drain what is left in a random order (Fisher-Yates, from the back).
        let mut n = buf_index.len();
        while n > 0 {
            let j = rng.random_range(0..n);
            if !sink.push(&buf[j * d..(j + 1) * d], buf_index[j]) {
                return Ok(());
            }
            n -= 1;
            buf.copy_within(n * d..(n + 1) * d, j * d);
            buf_index[j] = buf_index[n];
        }
        sink.finish();
        Ok(())
    }

    /// Decodes row group `g` of shard `s`, whose hook column `chunks` holds, into `out` as f32.
    fn decode(&self, s: usize, g: usize, chunks: Chunks, out: &mut Vec<f32>) -> Result<()> {
        let src = &self.shards[s];
        let path = &src.file.path;
        let rows = src.groups[g].1;
        out.clear();
        out.reserve(rows * self.dim);
        if catch_panics(path, || {
            self.decode_plain_pages(src, g, Arc::new(chunks.clone()), out)
        })? {
            return Ok(());
        }
        out.clear();
        catch_panics(path, || {
            let reader =
                ParquetRecordBatchReaderBuilder::new_with_metadata(chunks, src.file.meta.clone())
                    .with_projection(src.mask.clone())
                    .with_row_groups(vec![g])
                    .with_batch_size(rows.max(1))
                    .build()
                    .map_err(|source| StoreError::Parquet {
                        path: path.clone(),
                        source,
                    })?;
            for batch in reader {
                let batch = batch.map_err(|source| StoreError::Arrow {
                    path: path.clone(),
                    source,
                })?;
                let list: &FixedSizeListArray = batch.column(0).as_fixed_size_list();
                if list.value_length() as usize != self.dim || list.null_count() != 0 {
                    return Err(StoreError::Schema {
                        path: path.clone(),
                        message: format!(
                            "row group {g}: vectors of length {} with {} nulls, expected {} values and no nulls",
                            list.value_length(),
                            list.null_count(),
                            self.dim
                        ),
                    });
                }
                let values = list.values();
                let start = list.offset() * self.dim;
                let len = list.len() * self.dim;
                match self.dtype {
                    Dtype::F32 => {
                        let v: &Float32Array = values.as_primitive::<Float32Type>();
                        out.extend_from_slice(&v.values()[start..start + len]);
                    }
                    Dtype::F16 => {
                        let v: &Float16Array = values.as_primitive::<Float16Type>();
                        out.extend(v.values()[start..start + len].iter().map(|x| x.to_f32()));
                    }
                    Dtype::Bf16 => {
                        let v = values.as_fixed_size_binary();
                        let bytes = &v.value_data()[start * 2..(start + len) * 2];
                        extend_converted(out, bytes, self.dtype);
                    }
                }
            }
            if out.len() != rows * self.dim {
                return Err(StoreError::Schema {
                    path: path.clone(),
                    message: format!(
                        "row group {g} decoded to {} values, expected {}",
                        out.len(),
                        rows * self.dim
                    ),
                });
            }
            Ok(())
        })
    }
}

impl Plan {
    /// The fast path for what saescope writes: PLAIN pages of a column without nulls. The level
    /// sections are skipped rather than decoded (the value count proves there are no nulls),
    /// and values are copied once, straight from the page into `out`. Returns `Ok(false)` for a
    /// layout it does not handle (dictionary pages, other encodings), which the general Arrow
    /// decoder then reads.
    fn decode_plain_pages(
        &self,
        src: &ShardSource,
        g: usize,
        chunks: Arc<Chunks>,
        out: &mut Vec<f32>,
    ) -> Result<bool> {
        let path = &src.file.path;
        let pq = |source| StoreError::Parquet {
            path: path.clone(),
            source,
        };
        let damaged = |message: String| StoreError::Schema {
            path: path.clone(),
            message: format!("row group {g}: {message}"),
        };
        let chunk = src.file.meta.metadata().row_group(g).column(src.leaf);
        let descr = chunk.column_descr();
        let physical_ok = match self.dtype {
            Dtype::F32 => descr.physical_type() == PhysicalType::FLOAT,
            Dtype::F16 | Dtype::Bf16 => {
                descr.physical_type() == PhysicalType::FIXED_LEN_BYTE_ARRAY
                    && descr.type_length() == 2
            }
        };
        if !physical_ok {
            return Ok(false);
        }
        let level_sections =
            (descr.max_rep_level() > 0) as usize + (descr.max_def_level() > 0) as usize;
        let esize = self.dtype.size_bytes();
        let expected = src.groups[g].1 * self.dim;
        let mut pages =
            SerializedPageReader::new(chunks, chunk, src.groups[g].1, None).map_err(pq)?;
        while let Some(page) = pages.get_next_page().map_err(pq)? {
            let (buf, num_values, offset) = match page {
                Page::DataPage {
                    buf,
                    num_values,
                    encoding: Encoding::PLAIN,
                    def_level_encoding: Encoding::RLE,
                    rep_level_encoding: Encoding::RLE,
                    ..
                } => {
                    // V1 levels: each section is a 4-byte little-endian length, then RLE data.
                    let mut off = 0usize;
                    for _ in 0..level_sections {
                        let len = buf
                            .get(off..off + 4)
                            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
                            .ok_or_else(|| damaged("page ends inside its levels".into()))?;
                        off = off
                            .checked_add(4 + len)
                            .filter(|&o| o <= buf.len())
                            .ok_or_else(|| damaged("level section runs past the page".into()))?;
                    }
                    (buf, num_values, off)
                }
                Page::DataPageV2 {
                    buf,
                    num_values,
                    encoding: Encoding::PLAIN,
                    num_nulls: 0,
                    def_levels_byte_len,
                    rep_levels_byte_len,
                    ..
                } => {
                    let off = def_levels_byte_len as usize + rep_levels_byte_len as usize;
                    if off > buf.len() {
                        return Err(damaged("level sections run past the page".into()));
                    }
                    (buf, num_values, off)
                }
                _ => return Ok(false),
            };
            let values = &buf[offset..];
            if values.len() != num_values as usize * esize {
                // Fewer values than level entries means nulls: not ours, let Arrow decide.
                return Ok(false);
            }
            if out.len() + num_values as usize > expected {
                return Err(damaged(format!(
                    "more than the {expected} values the footer promises"
                )));
            }
            extend_converted(out, values, self.dtype);
        }
        if out.len() != expected {
            return Err(damaged(format!(
                "{} values, expected {expected}",
                out.len()
            )));
        }
        Ok(true)
    }
}

/// Appends little-endian values of `dtype` from `bytes` to `out` as f32.
fn extend_converted(out: &mut Vec<f32>, bytes: &[u8], dtype: Dtype) {
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        Dtype::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
        ),
    }
}

/// The consumer side of a background read: an iterator of batches. Dropping it stops the reader.
pub struct BatchReader {
    rx: Option<Receiver<Result<ActivationBatch>>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for BatchReader {
    type Item = Result<ActivationBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchReader {
    fn drop(&mut self) {
        // Closing the channel first makes a blocked producer's send fail, so the join returns.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
