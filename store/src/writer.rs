//! Streaming writer of activation runs.
//!
//! Memory stays bounded by one row group per hook: rows are buffered until a row group is full,
//! encoded, and appended to the shard that is open under a temporary name. When a shard reaches
//! its row count, both of its files are synced and renamed into place, and only then is the
//! manifest rewritten (atomically) to list it. A process killed at any point therefore leaves a
//! run whose manifest lists only complete shards; [`RunWriter::resume`] picks it up from there.

use crate::error::{Result, StoreError};
use crate::fsutil::{HashingWriter, lock_dir, sync_dir, tmp_path};
use crate::manifest::{
    Compression, Dtype, FileInfo, Layout, MANIFEST_FILE, Manifest, PartInfo, RunSpec, ShardInfo,
};
use crate::remote::{Commit, Remote, Version, is_url};
use crate::schema;
use arrow::array::{
    ArrayRef, FixedSizeBinaryArray, FixedSizeListArray, Float16Array, Float32Array, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as PqCompression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where one token came from. The harvester fills these; the store keeps them in the token file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// Which packed context (model input row) the token was in.
    pub context_id: u64,
    /// Position inside that context (0 is the first position).
    pub context_pos: u32,
    /// Source document, or `None` for a token the harvester inserted (BOS).
    pub doc_id: Option<u64>,
    /// Position inside the source document's token sequence.
    pub doc_pos: Option<u32>,
    /// The token's id in the tokenizer's vocabulary.
    pub token_id: u32,
}

/// Settings for a new run. Defaults: 256 MiB shards, 16 MiB row groups, uncompressed activations.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Target size of one shard's activation file, in bytes of stored values.
    pub shard_bytes: u64,
    /// Target size of one row group (the unit of shuffled reading), in bytes of stored values.
    pub row_group_bytes: u64,
    /// Compression of the activation files; token files are always zstd.
    pub compression: Compression,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            shard_bytes: 256 << 20,
            row_group_bytes: 16 << 20,
            compression: Compression::None,
        }
    }
}

impl WriterOptions {
    fn layout(&self, spec: &RunSpec) -> Layout {
        let row_bytes: u64 = spec
            .hooks
            .iter()
            .map(|h| (h.dim() * h.dtype.size_bytes()) as u64)
            .sum::<u64>()
            .max(1);
        let rows_per_shard = (self.shard_bytes / row_bytes).max(1);
        let rows_per_row_group = (self.row_group_bytes / row_bytes).clamp(1, rows_per_shard);
        Layout {
            rows_per_shard,
            rows_per_row_group,
            compression: self.compression,
        }
    }
}

/// Relative paths of shard `i`'s two files.
pub(crate) fn shard_paths(i: u32) -> (String, String) {
    (
        format!("activations/part-{i:05}.parquet"),
        format!("tokens/part-{i:05}.parquet"),
    )
}

struct OpenShard {
    act_writer: ArrowWriter<HashingWriter>,
    tok_writer: ArrowWriter<HashingWriter>,
    rows: u64,
}

/// Writes a run: see the module documentation for the crash-safety guarantees.
pub struct RunWriter {
    dir: PathBuf,
    manifest: Manifest,
    act_schema: Arc<Schema>,
    tok_schema: Arc<Schema>,
    act_props: WriterProperties,
    tok_props: WriterProperties,
    pending_tokens: Vec<TokenRecord>,
    pending_acts: Vec<Vec<f32>>,
    open: Option<OpenShard>,
    /// Held while the writer lives, so no other process writes the same run.
    _lock: std::fs::File,
    /// Where the run is committed when it lives on object storage (`dir` is then a staging folder).
    remote: Option<RemoteSink>,
}

/// A run written to object storage. Each shard is written to a local staging folder as for a
/// local run, uploaded whole when complete and deleted there; only then is the manifest that
/// lists it put, on the condition that the manifest is still the version this writer last put.
/// So a shard becomes part of the run when the manifest naming it is written, and a second
/// writer of the same run (another machine's job) is refused instead of interleaved. Shard
/// objects carry the writer's name, so no writer overwrites a shard another one committed; a
/// killed writer's unlisted objects are removed when the run completes.
struct RemoteSink {
    remote: Remote,
    url: PathBuf,
    version: Version,
    /// Tells this writer's shard objects from any other's.
    writer: String,
    _staging: tempfile::TempDir,
}

impl RunWriter {
    /// Starts a new run in `dir` (created if needed). Refuses a directory that already holds one.
    /// `dir` may be a URL on object storage (`s3://bucket/run`).
    pub fn create(dir: &Path, spec: RunSpec, opts: &WriterOptions) -> Result<Self> {
        Self::create_at(dir, spec, opts, 0, None)
    }

    /// Starts one part of a run harvested in parts in `dir`: the part holds the run's tokens
    /// from `first_token` on, with their global indices, so the parts merge without rewriting.
    pub fn create_part(
        dir: &Path,
        spec: RunSpec,
        opts: &WriterOptions,
        first_token: u64,
        part: PartInfo,
    ) -> Result<Self> {
        Self::create_at(dir, spec, opts, first_token, Some(part))
    }

    fn create_at(
        dir: &Path,
        spec: RunSpec,
        opts: &WriterOptions,
        first_token: u64,
        part: Option<PartInfo>,
    ) -> Result<Self> {
        if !is_url(dir) {
            return Self::create_with(dir, spec, opts, first_token, part);
        }
        let remote = Remote::open(dir)?;
        remote.check()?;
        if remote.size(MANIFEST_FILE)?.is_some() {
            return Err(StoreError::AlreadyExists {
                path: dir.to_owned(),
            });
        }
        let staging = staging_dir(dir)?;
        let mut w = Self::create_with(staging.path(), spec, opts, first_token, part)?;
        let version = remote
            .put(MANIFEST_FILE, w.manifest.to_json(), Commit::Create)
            .map_err(|e| match e {
                StoreError::AlreadyExists { .. } => StoreError::AlreadyExists {
                    path: dir.to_owned(),
                },
                e => e,
            })?;
        w.remote = Some(RemoteSink::new(remote, dir, version, staging));
        Ok(w)
    }

    fn create_with(
        dir: &Path,
        spec: RunSpec,
        opts: &WriterOptions,
        first_token: u64,
        part: Option<PartInfo>,
    ) -> Result<Self> {
        if dir.join(MANIFEST_FILE).exists() {
            return Err(StoreError::AlreadyExists {
                path: dir.to_owned(),
            });
        }
        let lock = lock_dir(dir)?;
        if dir.join(MANIFEST_FILE).exists() {
            // Created by another process between the check above and the lock.
            return Err(StoreError::AlreadyExists {
                path: dir.to_owned(),
            });
        }
        if opts.shard_bytes == 0 || opts.row_group_bytes == 0 {
            return Err(StoreError::InvalidInput(
                "shard and row-group sizes must be positive".into(),
            ));
        }
        let layout = opts.layout(&spec);
        let mut manifest = Manifest::new(spec, layout);
        manifest.first_token = first_token;
        manifest.part = part;
        manifest.validate(&dir.join(MANIFEST_FILE))?;
        for sub in ["activations", "tokens"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| StoreError::io(&d, e))?;
        }
        manifest.save(dir)?;
        Self::with_manifest(dir, manifest, lock)
    }

    /// Reopens an incomplete run to append after its last complete shard. Partial files left by
    /// a killed writer are removed. The caller continues from [`RunWriter::tokens_written`].
    pub fn resume(dir: &Path) -> Result<Self> {
        if is_url(dir) {
            return Self::resume_remote(dir);
        }
        // Loaded first so that a directory with no run says so, then again under the lock:
        // before anything is removed, since another process may be writing these very files.
        Manifest::load(dir)?;
        let lock = lock_dir(dir)?;
        let manifest = Manifest::load(dir)?;
        if manifest.complete {
            return Err(StoreError::AlreadyComplete {
                path: dir.to_owned(),
            });
        }
        let listed: std::collections::HashSet<String> = manifest
            .shards
            .iter()
            .flat_map(|s| [s.activations.path.clone(), s.tokens.path.clone()])
            .collect();
        // Anything under activations/ or tokens/ that the manifest does not list is a leftover of
        // the interrupted shard: a temporary file, or files renamed just before the kill but never
        // recorded. They will be written again.
        for sub in ["activations", "tokens"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| StoreError::io(&d, e))?;
            for entry in std::fs::read_dir(&d).map_err(|e| StoreError::io(&d, e))? {
                let entry = entry.map_err(|e| StoreError::io(&d, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let rel = format!("{sub}/{name}");
                if name.starts_with("part-") && !listed.contains(&rel) {
                    tracing::info!("removing partial file {}", entry.path().display());
                    std::fs::remove_file(entry.path())
                        .map_err(|e| StoreError::io(entry.path(), e))?;
                }
            }
        }
        Self::with_manifest(dir, manifest, lock)
    }

    /// Resumes a run on object storage from its manifest: the shards it lists stay where they
    /// are, and writing continues in a fresh staging folder.
    fn resume_remote(dir: &Path) -> Result<Self> {
        let remote = Remote::open(dir)?;
        let (manifest, version) = Manifest::load_remote(&remote)?;
        if manifest.complete {
            return Err(StoreError::AlreadyComplete {
                path: dir.to_owned(),
            });
        }
        let staging = staging_dir(dir)?;
        manifest.save(staging.path())?;
        let mut w = Self::resume(staging.path())?;
        w.remote = Some(RemoteSink::new(remote, dir, version, staging));
        Ok(w)
    }

    fn with_manifest(dir: &Path, manifest: Manifest, lock: std::fs::File) -> Result<Self> {
        let hooks = &manifest.hooks;
        let act_schema = schema::activation_schema(hooks);
        let tok_schema = schema::token_schema();
        // Activations are written PLAIN (no dictionary, no statistics): floats do not repeat, and
        // PLAIN pages decode with a memcpy.
        let mut act_props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(manifest.layout.rows_per_row_group as usize))
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_compression(match manifest.layout.compression {
                Compression::None => PqCompression::UNCOMPRESSED,
                Compression::Zstd(level) => PqCompression::ZSTD(
                    ZstdLevel::try_new(level)
                        .map_err(|e| StoreError::InvalidInput(format!("zstd level: {e}")))?,
                ),
            });
        // Token indices are sorted: page statistics on them let other tools prune by range.
        act_props = act_props.set_column_statistics_enabled(
            ColumnPath::from(schema::TOKEN_INDEX),
            EnabledStatistics::Page,
        );
        let tok_props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(manifest.layout.rows_per_row_group as usize))
            .set_compression(PqCompression::ZSTD(ZstdLevel::default()))
            .build();
        let rows_per_group = manifest.layout.rows_per_row_group as usize;
        Ok(RunWriter {
            dir: dir.to_owned(),
            pending_tokens: Vec::with_capacity(rows_per_group),
            pending_acts: hooks
                .iter()
                .map(|h| Vec::with_capacity(rows_per_group * h.dim()))
                .collect(),
            manifest,
            act_schema,
            tok_schema,
            act_props: act_props.build(),
            tok_props,
            open: None,
            _lock: lock,
            remote: None,
        })
    }

    /// Tokens already stored in complete shards (where a resumed producer must continue),
    /// counted from the run's (or part's) first token.
    pub fn tokens_written(&self) -> u64 {
        self.manifest.total_tokens
    }

    /// Tokens accepted so far, including those not yet in a complete shard.
    pub fn tokens_accepted(&self) -> u64 {
        self.manifest.total_tokens
            + self.open.as_ref().map_or(0, |o| o.rows)
            + self.pending_tokens.len() as u64
    }

    /// The manifest as last saved: it lists complete shards only.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The run directory (its URL for a run on object storage).
    pub fn dir(&self) -> &Path {
        match &self.remote {
            Some(r) => &r.url,
            None => &self.dir,
        }
    }

    /// Appends a batch of tokens. `acts[h]` holds `tokens.len() * dim(h)` values for the run's
    /// `h`-th hook point, row-major, in f32; they are converted to the hook's storage dtype.
    pub fn append(&mut self, tokens: &[TokenRecord], acts: &[&[f32]]) -> Result<()> {
        let hooks = &self.manifest.hooks;
        let dims: Vec<usize> = hooks.iter().map(|h| h.dim()).collect();
        if acts.len() != hooks.len() {
            return Err(StoreError::InvalidInput(format!(
                "got activations for {} hook points, the run has {}",
                acts.len(),
                hooks.len()
            )));
        }
        for (h, a) in hooks.iter().zip(acts) {
            if a.len() != tokens.len() * h.dim() {
                return Err(StoreError::InvalidInput(format!(
                    "hook `{}`: got {} values for {} tokens, expected {} ({} per token)",
                    h.name,
                    a.len(),
                    tokens.len(),
                    tokens.len() * h.dim(),
                    h.dim()
                )));
            }
        }
        let rows_per_group = self.manifest.layout.rows_per_row_group as usize;
        let rows_per_shard = self.manifest.layout.rows_per_shard;
        let mut start = 0;
        while start < tokens.len() {
            let in_shard =
                self.open.as_ref().map_or(0, |o| o.rows) + self.pending_tokens.len() as u64;
            let room_group = rows_per_group - self.pending_tokens.len();
            let room_shard = (rows_per_shard - in_shard) as usize;
            let n = room_group.min(room_shard).min(tokens.len() - start);
            self.pending_tokens
                .extend_from_slice(&tokens[start..start + n]);
            for ((buf, a), &d) in self.pending_acts.iter_mut().zip(acts).zip(&dims) {
                buf.extend_from_slice(&a[start * d..(start + n) * d]);
            }
            start += n;
            if self.pending_tokens.len() == rows_per_group || n == room_shard {
                self.flush_row_group()?;
            }
            if self.open.as_ref().is_some_and(|o| o.rows == rows_per_shard) {
                self.close_shard()?;
            }
        }
        Ok(())
    }

    /// Writes what is buffered, closes the last shard and marks the run complete.
    pub fn finish(mut self) -> Result<Manifest> {
        self.flush_row_group()?;
        if self.open.is_some() {
            self.close_shard()?;
        }
        self.manifest.complete = true;
        self.manifest.save(&self.dir)?;
        self.commit()?;
        if let Some(sink) = &self.remote {
            sink.remove_unlisted(&self.manifest)?;
        }
        Ok(self.manifest)
    }

    fn shard_index(&self) -> u32 {
        self.manifest.shards.len() as u32
    }

    fn flush_row_group(&mut self) -> Result<()> {
        if self.pending_tokens.is_empty() {
            return Ok(());
        }
        if self.open.is_none() {
            self.open = Some(self.open_shard()?);
        }
        let (act_rel, tok_rel) = shard_paths(self.shard_index());
        let first = self.manifest.first_token
            + self.manifest.total_tokens
            + self.open.as_ref().map_or(0, |o| o.rows);
        let n = self.pending_tokens.len();
        let index: ArrayRef = Arc::new(UInt64Array::from_iter_values(first..first + n as u64));

        let mut columns = vec![index.clone()];
        for (h, buf) in self.manifest.hooks.iter().zip(&mut self.pending_acts) {
            let values: ArrayRef = match h.dtype {
                Dtype::F32 => Arc::new(Float32Array::from(std::mem::take(buf))),
                Dtype::F16 => Arc::new(Float16Array::from_iter_values(
                    buf.drain(..).map(half::f16::from_f32),
                )),
                Dtype::Bf16 => {
                    let bytes: Vec<u8> = buf
                        .drain(..)
                        .flat_map(|v| half::bf16::from_f32(v).to_bits().to_le_bytes())
                        .collect();
                    Arc::new(
                        FixedSizeBinaryArray::try_new(2, bytes.into(), None)
                            .expect("2-byte values from whole bf16s"),
                    )
                }
            };
            let item = Arc::new(Field::new("item", schema::element_type(h.dtype), false));
            let list = FixedSizeListArray::try_new(item, h.dim() as i32, values, None)
                .map_err(|e| StoreError::InvalidInput(format!("hook `{}`: {e}", h.name)))?;
            columns.push(Arc::new(list));
            buf.reserve(self.manifest.layout.rows_per_row_group as usize * h.dim());
        }
        let act_batch = RecordBatch::try_new(self.act_schema.clone(), columns).map_err(|e| {
            StoreError::Arrow {
                path: self.dir.join(&act_rel),
                source: e,
            }
        })?;

        let t = &self.pending_tokens;
        let tok_columns: Vec<ArrayRef> = vec![
            index,
            Arc::new(UInt64Array::from_iter_values(
                t.iter().map(|r| r.context_id),
            )),
            Arc::new(UInt32Array::from_iter_values(
                t.iter().map(|r| r.context_pos),
            )),
            Arc::new(UInt64Array::from_iter(t.iter().map(|r| r.doc_id))),
            Arc::new(UInt32Array::from_iter(t.iter().map(|r| r.doc_pos))),
            Arc::new(UInt32Array::from_iter_values(t.iter().map(|r| r.token_id))),
        ];
        let tok_batch =
            RecordBatch::try_new(self.tok_schema.clone(), tok_columns).map_err(|e| {
                StoreError::Arrow {
                    path: self.dir.join(&tok_rel),
                    source: e,
                }
            })?;

        let dir = self.dir.clone();
        let open = self.open.as_mut().expect("opened above");
        let pq = |rel: &str| {
            let path = tmp_path(&dir.join(rel));
            move |source| StoreError::Parquet { path, source }
        };
        open.act_writer.write(&act_batch).map_err(pq(&act_rel))?;
        open.act_writer.flush().map_err(pq(&act_rel))?;
        open.tok_writer.write(&tok_batch).map_err(pq(&tok_rel))?;
        open.tok_writer.flush().map_err(pq(&tok_rel))?;
        open.rows += n as u64;
        self.pending_tokens.clear();
        Ok(())
    }

    fn open_shard(&self) -> Result<OpenShard> {
        let (act_rel, tok_rel) = shard_paths(self.shard_index());
        Ok(OpenShard {
            act_writer: parquet_writer(&self.dir.join(act_rel), &self.act_schema, &self.act_props)?,
            tok_writer: parquet_writer(&self.dir.join(tok_rel), &self.tok_schema, &self.tok_props)?,
            rows: 0,
        })
    }

    fn close_shard(&mut self) -> Result<()> {
        let open = self.open.take().expect("a shard is open");
        let index = self.shard_index();
        let (act_rel, tok_rel) = shard_paths(index);
        let mut act = finish_file(&self.dir, &act_rel, open.act_writer)?;
        let mut tok = finish_file(&self.dir, &tok_rel, open.tok_writer)?;
        for sub in ["activations", "tokens"] {
            sync_dir(&self.dir.join(sub))?;
        }
        if let Some(sink) = &self.remote {
            // Named for this writer alone: a second writer of the run (refused at its next
            // commit) can never overwrite a shard the manifest already lists.
            act.path = sink.object_name(&act_rel);
            tok.path = sink.object_name(&tok_rel);
        }
        self.manifest.shards.push(ShardInfo {
            index,
            first_token: self.manifest.first_token + self.manifest.total_tokens,
            rows: open.rows,
            activations: act,
            tokens: tok,
        });
        self.manifest.total_tokens += open.rows;
        self.manifest.save(&self.dir)?;
        if let Some(sink) = &self.remote {
            // Stop early, before uploading, when another writer has committed since this one.
            if sink.remote.version(MANIFEST_FILE)?.as_ref() != Some(&sink.version) {
                return Err(sink.remote.changed(MANIFEST_FILE));
            }
            let shard = self.manifest.shards.last().expect("pushed above");
            let objects = [&shard.activations.path, &shard.tokens.path];
            for (rel, object) in [&act_rel, &tok_rel].into_iter().zip(objects) {
                let local = self.dir.join(rel);
                sink.remote.upload(&local, object)?;
                std::fs::remove_file(&local).map_err(|e| StoreError::io(&local, e))?;
            }
        }
        self.commit()?;
        tracing::debug!(shard = index, rows = open.rows, "shard complete");
        Ok(())
    }
}

impl RemoteSink {
    /// A sink for the run at `url`, under a writer name of its own.
    fn new(remote: Remote, url: &Path, version: Version, staging: tempfile::TempDir) -> Self {
        RemoteSink {
            remote,
            url: url.to_owned(),
            version,
            writer: format!("{:08x}", rand::random::<u32>()),
            _staging: staging,
        }
    }

    /// The object name of staged file `rel` (`activations/part-00003.parquet` becomes
    /// `activations/part-00003-WRITER.parquet`).
    fn object_name(&self, rel: &str) -> String {
        match rel.strip_suffix(".parquet") {
            Some(stem) => format!("{stem}-{}.parquet", self.writer),
            None => format!("{rel}-{}", self.writer),
        }
    }

    /// Deletes shard objects the complete run's manifest does not list: uploads of writers that
    /// were killed (or stopped as a second writer) before their manifest named them. Any writer
    /// still running is stale by now and will be refused at its next commit, so nothing listed
    /// can lose its files. Leaves tools that read `activations/*.parquet` (DuckDB) the run alone.
    fn remove_unlisted(&self, manifest: &Manifest) -> Result<()> {
        let listed: std::collections::HashSet<&str> = manifest
            .shards
            .iter()
            .flat_map(|s| [s.activations.path.as_str(), s.tokens.path.as_str()])
            .collect();
        for sub in ["activations", "tokens"] {
            for (rel, _) in self.remote.list(sub)? {
                if !listed.contains(rel.as_str()) {
                    tracing::info!(
                        "removing {}, which no manifest lists",
                        self.remote.path_of(&rel).display()
                    );
                    self.remote.delete(&rel)?;
                }
            }
        }
        Ok(())
    }
}

impl RunWriter {
    /// Puts the manifest on object storage, if the run is there, after the shards it lists.
    fn commit(&mut self) -> Result<()> {
        if let Some(sink) = &mut self.remote {
            sink.version = sink.remote.put(
                MANIFEST_FILE,
                self.manifest.to_json(),
                Commit::Update(sink.version.clone()),
            )?;
        }
        Ok(())
    }
}

/// A fresh local folder for the shard being written to `url`, removed when the writer ends.
fn staging_dir(url: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("saescope-staging-")
        .tempdir()
        .map_err(|e| {
            StoreError::io(
                std::env::temp_dir().join(url.file_name().unwrap_or_default()),
                e,
            )
        })
}

/// Opens a Parquet writer on the temporary name of `path`.
fn parquet_writer(
    path: &Path,
    schema: &Arc<Schema>,
    props: &WriterProperties,
) -> Result<ArrowWriter<HashingWriter>> {
    let tmp = tmp_path(path);
    ArrowWriter::try_new(
        HashingWriter::create(&tmp)?,
        schema.clone(),
        Some(props.clone()),
    )
    .map_err(|source| StoreError::Parquet { path: tmp, source })
}

/// Writes the Parquet footer, syncs, and renames the temporary file into place.
fn finish_file(dir: &Path, rel: &str, writer: ArrowWriter<HashingWriter>) -> Result<FileInfo> {
    let path = dir.join(rel);
    let tmp = tmp_path(&path);
    let inner = writer.into_inner().map_err(|source| StoreError::Parquet {
        path: tmp.clone(),
        source,
    })?;
    let (bytes, sha256) = inner.finish(&tmp)?;
    std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
    Ok(FileInfo {
        path: rel.to_owned(),
        bytes,
        sha256,
    })
}
