//! The feature store: what `saescope analyze` learned about every feature of a dictionary, as
//! three Parquet tables and a JSON summary in one directory (by default `DICT/features/`).
//! DuckDB, Polars or pandas read it without saescope; the layout is in `store/README.md`.
//!
//! Each table is written to a temporary name and renamed into place; `summary.json` is written
//! last, so a directory without it is an interrupted analysis, never a half-read one.

use crate::error::{Result, StoreError};
use crate::fsutil::{tmp_path, write_atomic};
use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float32Builder, Int16Array, ListArray, ListBuilder,
    StringArray, StringBuilder, UInt8Array, UInt16Array, UInt32Array, UInt32Builder, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Float32Type, Schema, UInt32Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the per-feature table: statistics, activation histogram, logit effects.
pub const FEATURES_FILE: &str = "features.parquet";
/// File name of the sampled-contexts table: one row per window, sorted by feature.
pub const CONTEXTS_FILE: &str = "contexts.parquet";
/// File name of the decoder-neighbour table: one row per (feature, neighbour).
pub const NEIGHBOURS_FILE: &str = "neighbours.parquet";
/// File name of the summary, written last: a store without it is incomplete.
pub const SUMMARY_FILE: &str = "summary.json";
/// The `summary.json` format version this saescope writes and reads; others are refused.
pub const FEATURE_STORE_VERSION: u32 = 1;
/// Rows per row group of `contexts.parquet`: about 60 features' contexts, so reading one
/// feature decodes a few thousand rows, not the table.
pub const CONTEXT_ROWS_PER_GROUP: usize = 4_096;

/// One feature's statistics and logit effects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeatureRow {
    /// The latent's index in the dictionary.
    pub feature: u32,
    /// Tokens on which the feature was nonzero.
    pub count: u64,
    /// `count` divided by the tokens analysed ([`Summary::tokens`]); 0 for a dead feature.
    pub density: f64,
    /// Mean of the nonzero activations.
    pub mean_act: f32,
    /// Largest of the nonzero activations.
    pub max_act: f32,
    /// Counts of nonzero activations in equal-width bins over [0, act_hist_max).
    pub act_hist: Vec<u32>,
    /// Upper edge of `act_hist`'s range: a power of two above `max_act`.
    pub act_hist_max: f32,
    /// Ids of the tokens whose logits the decoder direction raises most, largest first.
    pub logit_top_ids: Vec<u32>,
    /// The logit effect on each of `logit_top_ids`, in the same order.
    pub logit_top_values: Vec<f32>,
    /// The text of each of `logit_top_ids`, from the model's vocabulary.
    pub logit_top_tokens: Vec<String>,
    /// Ids of the tokens whose logits the decoder direction lowers most, most lowered first.
    pub logit_bottom_ids: Vec<u32>,
    /// The logit effect on each of `logit_bottom_ids`, in the same order.
    pub logit_bottom_values: Vec<f32>,
    /// The text of each of `logit_bottom_ids`, from the model's vocabulary.
    pub logit_bottom_tokens: Vec<String>,
    /// Counts of the logit effect over the whole vocabulary, equal-width bins over
    /// [logit_hist_min, logit_hist_max].
    pub logit_hist: Vec<u32>,
    /// Lower edge of `logit_hist`: the smallest logit effect over the vocabulary.
    pub logit_hist_min: f32,
    /// Upper edge of `logit_hist`: the largest logit effect over the vocabulary.
    pub logit_hist_max: f32,
    /// Attention-output dictionaries: each head's share of the decoder norm (sums to 1).
    pub head_share: Vec<f32>,
}

/// Which sample a context is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextKind {
    /// Among the feature's largest activations; `rank` 0 is the largest.
    Top,
    /// A uniform sample from one activation interval.
    Interval(u8),
}

/// A window of tokens around one activating token, with the feature's activation on each.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextRow {
    /// The feature whose activations the window shows.
    pub feature: u32,
    /// Top context or interval sample, and which interval (`kind` and `interval` in the file).
    pub kind: ContextKind,
    /// Order within its kind and interval; 0 is the largest activation.
    pub rank: u16,
    /// The activating token's index in the harvest run.
    pub token_index: u64,
    /// The feature's activation on the activating token.
    pub activation: f32,
    /// Position of the activating token in the window.
    pub focus: u16,
    /// Token ids of the window; it never crosses a context boundary.
    pub token_ids: Vec<u32>,
    /// The text of each of `token_ids`, from the model's vocabulary.
    pub tokens: Vec<String>,
    /// The feature's activation on each token of the window.
    pub acts: Vec<f32>,
}

/// One window of a [`Contexts`] table, borrowed: a [`ContextRow`] without the token text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window<'a> {
    /// The feature whose activations the window shows.
    pub feature: u32,
    /// Top context or interval sample, and which interval.
    pub kind: ContextKind,
    /// Order within its kind and interval; 0 is the largest activation.
    pub rank: u16,
    /// The activating token's index in the harvest run.
    pub token_index: u64,
    /// The feature's activation on the activating token.
    pub activation: f32,
    /// Position of the activating token in the window.
    pub focus: u16,
    /// Token ids of the window; it never crosses a context boundary.
    pub token_ids: &'a [u32],
    /// The feature's activation on each token of the window, one per token id.
    pub acts: &'a [f32],
}

impl Window<'_> {
    /// The row as it reads back from `contexts.parquet`, tokens named from `vocab` (an id
    /// outside it is named by an empty string).
    pub fn named(&self, vocab: &[String]) -> ContextRow {
        ContextRow {
            feature: self.feature,
            kind: self.kind,
            rank: self.rank,
            token_index: self.token_index,
            activation: self.activation,
            focus: self.focus,
            token_ids: self.token_ids.to_vec(),
            tokens: self
                .token_ids
                .iter()
                .map(|&i| vocab.get(i as usize).cloned().unwrap_or_default())
                .collect(),
            acts: self.acts.to_vec(),
        }
    }
}

/// The contexts table held as columns, which is how `saescope analyze` builds it and
/// [`write_feature_store`] writes it. A feature store holds some 70 windows a feature, over a
/// million for a large dictionary: as columns they take a few allocations in all instead of
/// some twenty a window (one per token name), and no token text, which the writer looks up in
/// the vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub struct Contexts {
    feature: Vec<u32>,
    kind: Vec<ContextKind>,
    rank: Vec<u16>,
    token_index: Vec<u64>,
    activation: Vec<f32>,
    focus: Vec<u16>,
    /// Window i spans `offsets[i]..offsets[i + 1]` of `token_ids` and `acts`.
    offsets: Vec<usize>,
    token_ids: Vec<u32>,
    acts: Vec<f32>,
}

impl Default for Contexts {
    fn default() -> Self {
        Contexts::with_capacity(0, 0)
    }
}

impl Contexts {
    /// An empty table with room for `windows` windows of `tokens` tokens in all.
    pub fn with_capacity(windows: usize, tokens: usize) -> Contexts {
        let mut offsets = Vec::with_capacity(windows + 1);
        offsets.push(0);
        Contexts {
            feature: Vec::with_capacity(windows),
            kind: Vec::with_capacity(windows),
            rank: Vec::with_capacity(windows),
            token_index: Vec::with_capacity(windows),
            activation: Vec::with_capacity(windows),
            focus: Vec::with_capacity(windows),
            offsets,
            token_ids: Vec::with_capacity(tokens),
            acts: Vec::with_capacity(tokens),
        }
    }

    /// Appends a window. Panics if its token ids and activations differ in length.
    pub fn push(&mut self, w: Window<'_>) {
        assert_eq!(
            w.token_ids.len(),
            w.acts.len(),
            "a context window has one activation per token"
        );
        self.feature.push(w.feature);
        self.kind.push(w.kind);
        self.rank.push(w.rank);
        self.token_index.push(w.token_index);
        self.activation.push(w.activation);
        self.focus.push(w.focus);
        self.token_ids.extend_from_slice(w.token_ids);
        self.acts.extend_from_slice(w.acts);
        self.offsets.push(self.token_ids.len());
    }

    /// Appends every window of `other`, in order.
    pub fn append(&mut self, other: &Contexts) {
        let base = self.token_ids.len();
        self.feature.extend_from_slice(&other.feature);
        self.kind.extend_from_slice(&other.kind);
        self.rank.extend_from_slice(&other.rank);
        self.token_index.extend_from_slice(&other.token_index);
        self.activation.extend_from_slice(&other.activation);
        self.focus.extend_from_slice(&other.focus);
        self.token_ids.extend_from_slice(&other.token_ids);
        self.acts.extend_from_slice(&other.acts);
        self.offsets
            .extend(other.offsets[1..].iter().map(|&o| base + o));
    }

    /// Windows held.
    pub fn len(&self) -> usize {
        self.feature.len()
    }

    /// Whether the table holds no window.
    pub fn is_empty(&self) -> bool {
        self.feature.is_empty()
    }

    /// Tokens over all windows.
    pub fn tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Window `i`. Panics if `i >= self.len()`.
    pub fn get(&self, i: usize) -> Window<'_> {
        let span = self.offsets[i]..self.offsets[i + 1];
        Window {
            feature: self.feature[i],
            kind: self.kind[i],
            rank: self.rank[i],
            token_index: self.token_index[i],
            activation: self.activation[i],
            focus: self.focus[i],
            token_ids: &self.token_ids[span.clone()],
            acts: &self.acts[span],
        }
    }

    /// Every window, in the order they were added.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Window<'_>> {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// One row of `neighbours.parquet`: a feature and one of its nearest decoder directions.
#[derive(Clone, Debug, PartialEq)]
pub struct NeighbourRow {
    /// The feature whose neighbour this is.
    pub feature: u32,
    /// Position among the feature's neighbours; 0 has the highest cosine.
    pub rank: u8,
    /// The neighbouring feature's index.
    pub neighbour: u32,
    /// Cosine between the two decoder directions.
    pub cosine: f32,
    /// Tokens on which both fired.
    pub cooccurrence: u64,
    /// cooccurrence / (count_feature + count_neighbour − cooccurrence).
    pub jaccard: f32,
}

/// `summary.json`: what was analysed, and figures across all features.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Always [`FEATURE_STORE_VERSION`]; a reader refuses any other version.
    pub format_version: u32,
    /// Path of the analysed dictionary's directory.
    pub dictionary: String,
    /// Path of the harvest run analysed, or `None` when it was not recorded.
    pub run: Option<String>,
    /// The hook point the dictionary reads, e.g. `blocks.6.hook_resid_post`.
    pub hook: String,
    /// The dictionary's architecture by its SAELens name, e.g. `topk` or `jumprelu`.
    pub method: String,
    /// Features in the dictionary, one row each in `features.parquet`.
    pub features: u64,
    /// Tokens analysed; every feature's `density` is its `count` divided by this.
    pub tokens: u64,
    /// Features that never fired on the tokens analysed (`count` of 0).
    pub dead: u64,
    /// Features by log10(density + 1e-10), 20 bins of 0.5 from −10 to 0.
    pub log10_density_histogram: Vec<u64>,
    /// Intervals of interval samples, samples per interval, top contexts kept, window size.
    pub intervals: usize,
    /// Samples kept from each interval (default 5).
    pub per_interval: usize,
    /// Top contexts kept per feature (default 20).
    pub top_contexts: usize,
    /// Tokens shown before the activating one in each window (default 12).
    pub window_before: usize,
    /// Tokens shown after the activating one in each window (default 4).
    pub window_after: usize,
    /// Wall time of the whole analysis, in seconds.
    pub seconds: f64,
    /// What each column means, for readers without this crate.
    pub definitions: serde_json::Value,
}

pub(crate) fn list_u32(rows: impl Iterator<Item = Vec<u32>>) -> ArrayRef {
    let mut b = ListBuilder::new(UInt32Builder::new());
    for r in rows {
        b.values().append_slice(&r);
        b.append(true);
    }
    Arc::new(b.finish())
}

pub(crate) fn list_f32(rows: impl Iterator<Item = Vec<f32>>) -> ArrayRef {
    let mut b = ListBuilder::new(Float32Builder::new());
    for r in rows {
        b.values().append_slice(&r);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn list_str<'a>(rows: impl Iterator<Item = &'a Vec<String>>) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for s in r {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

pub(crate) fn list_field(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, true))),
        false,
    )
}

pub(crate) fn write_table(path: &Path, batch: RecordBatch, rows_per_group: usize) -> Result<()> {
    let tmp = tmp_path(path);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(rows_per_group.max(1)))
        .build();
    let file = std::fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    let pq = |source| StoreError::Parquet {
        path: tmp.clone(),
        source,
    };
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(pq)?;
    w.write(&batch).map_err(pq)?;
    let file = w.into_inner().map_err(pq)?;
    file.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))
}

pub(crate) fn batch(
    path: &Path,
    fields: Vec<Field>,
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|source| {
        StoreError::Arrow {
            path: path.to_owned(),
            source,
        }
    })
}

/// Writes the three tables, then `summary.json`. Contexts and neighbours must be sorted by
/// feature: readers then skip row groups by their statistics. The contexts' tokens are named
/// from `vocab`, indexed by token id; an id outside it is refused before anything is written.
pub fn write_feature_store(
    dir: &Path,
    features: &[FeatureRow],
    contexts: &Contexts,
    neighbours: &[NeighbourRow],
    vocab: &[String],
    summary: &Summary,
) -> Result<()> {
    let contexts_path = dir.join(CONTEXTS_FILE);
    let outside = contexts.iter().find_map(|w| {
        let id = w.token_ids.iter().find(|&&i| i as usize >= vocab.len())?;
        Some((w, *id))
    });
    if let Some((w, id)) = outside {
        return Err(StoreError::InvalidInput(format!(
            "{}: the context of feature {} at token {} holds token id {id}, outside the vocabulary of {} tokens (does the model match the run?)",
            contexts_path.display(),
            w.feature,
            w.token_index,
            vocab.len()
        )));
    }
    // Parquet list offsets are 32-bit.
    if contexts.tokens() > i32::MAX as usize {
        return Err(StoreError::InvalidInput(format!(
            "{}: {} context tokens in all, more than a Parquet list column holds ({}); analyse fewer features at a time or shorten the windows",
            contexts_path.display(),
            contexts.tokens(),
            i32::MAX
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    // A re-analysis first removes the old summary: until the new one lands, the store reads
    // as incomplete rather than as a mix of old and new tables.
    let summary_path = dir.join(SUMMARY_FILE);
    if summary_path.exists() {
        std::fs::remove_file(&summary_path).map_err(|e| StoreError::io(&summary_path, e))?;
    }

    let f = features;
    let path = dir.join(FEATURES_FILE);
    let b = batch(
        &path,
        vec![
            Field::new("feature", DataType::UInt32, false),
            Field::new("count", DataType::UInt64, false),
            Field::new("density", DataType::Float64, false),
            Field::new("mean_act", DataType::Float32, false),
            Field::new("max_act", DataType::Float32, false),
            list_field("act_hist", DataType::UInt32),
            Field::new("act_hist_max", DataType::Float32, false),
            list_field("logit_top_ids", DataType::UInt32),
            list_field("logit_top_values", DataType::Float32),
            list_field("logit_top_tokens", DataType::Utf8),
            list_field("logit_bottom_ids", DataType::UInt32),
            list_field("logit_bottom_values", DataType::Float32),
            list_field("logit_bottom_tokens", DataType::Utf8),
            list_field("logit_hist", DataType::UInt32),
            Field::new("logit_hist_min", DataType::Float32, false),
            Field::new("logit_hist_max", DataType::Float32, false),
            list_field("head_share", DataType::Float32),
        ],
        vec![
            Arc::new(UInt32Array::from_iter_values(f.iter().map(|r| r.feature))),
            Arc::new(UInt64Array::from_iter_values(f.iter().map(|r| r.count))),
            Arc::new(arrow::array::Float64Array::from_iter_values(
                f.iter().map(|r| r.density),
            )),
            Arc::new(Float32Array::from_iter_values(f.iter().map(|r| r.mean_act))),
            Arc::new(Float32Array::from_iter_values(f.iter().map(|r| r.max_act))),
            list_u32(f.iter().map(|r| r.act_hist.clone())),
            Arc::new(Float32Array::from_iter_values(
                f.iter().map(|r| r.act_hist_max),
            )),
            list_u32(f.iter().map(|r| r.logit_top_ids.clone())),
            list_f32(f.iter().map(|r| r.logit_top_values.clone())),
            list_str(f.iter().map(|r| &r.logit_top_tokens)),
            list_u32(f.iter().map(|r| r.logit_bottom_ids.clone())),
            list_f32(f.iter().map(|r| r.logit_bottom_values.clone())),
            list_str(f.iter().map(|r| &r.logit_bottom_tokens)),
            list_u32(f.iter().map(|r| r.logit_hist.clone())),
            Arc::new(Float32Array::from_iter_values(
                f.iter().map(|r| r.logit_hist_min),
            )),
            Arc::new(Float32Array::from_iter_values(
                f.iter().map(|r| r.logit_hist_max),
            )),
            list_f32(f.iter().map(|r| r.head_share.clone())),
        ],
    )?;
    write_table(&path, b, 16_384)?;

    let c = contexts;
    let path = contexts_path;
    // The three list columns share one set of window offsets.
    let offsets = OffsetBuffer::new(c.offsets.iter().map(|&o| o as i32).collect());
    let windows = |values: ArrayRef| -> ArrayRef {
        let item = Arc::new(Field::new("item", values.data_type().clone(), true));
        Arc::new(ListArray::new(item, offsets.clone(), values, None))
    };
    let names = StringArray::from_iter_values(c.token_ids.iter().map(|&i| &vocab[i as usize]));
    let b = batch(
        &path,
        vec![
            Field::new("feature", DataType::UInt32, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("interval", DataType::Int16, false),
            Field::new("rank", DataType::UInt16, false),
            Field::new("token_index", DataType::UInt64, false),
            Field::new("activation", DataType::Float32, false),
            Field::new("focus", DataType::UInt16, false),
            list_field("token_ids", DataType::UInt32),
            list_field("tokens", DataType::Utf8),
            list_field("acts", DataType::Float32),
        ],
        vec![
            Arc::new(UInt32Array::from(c.feature.clone())),
            Arc::new(StringArray::from_iter_values(c.kind.iter().map(
                |k| match k {
                    ContextKind::Top => "top",
                    ContextKind::Interval(_) => "interval",
                },
            ))),
            Arc::new(Int16Array::from_iter_values(c.kind.iter().map(
                |k| match k {
                    ContextKind::Top => -1,
                    ContextKind::Interval(i) => *i as i16,
                },
            ))),
            Arc::new(UInt16Array::from(c.rank.clone())),
            Arc::new(UInt64Array::from(c.token_index.clone())),
            Arc::new(Float32Array::from(c.activation.clone())),
            Arc::new(UInt16Array::from(c.focus.clone())),
            windows(Arc::new(UInt32Array::from(c.token_ids.clone()))),
            windows(Arc::new(names)),
            windows(Arc::new(Float32Array::from(c.acts.clone()))),
        ],
    )?;
    // Small row groups: the explorer reads one feature's contexts by skipping to its group.
    write_table(&path, b, CONTEXT_ROWS_PER_GROUP)?;

    let n = neighbours;
    let path = dir.join(NEIGHBOURS_FILE);
    let b = batch(
        &path,
        vec![
            Field::new("feature", DataType::UInt32, false),
            Field::new("rank", DataType::UInt8, false),
            Field::new("neighbour", DataType::UInt32, false),
            Field::new("cosine", DataType::Float32, false),
            Field::new("cooccurrence", DataType::UInt64, false),
            Field::new("jaccard", DataType::Float32, false),
        ],
        vec![
            Arc::new(UInt32Array::from_iter_values(n.iter().map(|r| r.feature))),
            Arc::new(UInt8Array::from_iter_values(n.iter().map(|r| r.rank))),
            Arc::new(UInt32Array::from_iter_values(n.iter().map(|r| r.neighbour))),
            Arc::new(Float32Array::from_iter_values(n.iter().map(|r| r.cosine))),
            Arc::new(UInt64Array::from_iter_values(
                n.iter().map(|r| r.cooccurrence),
            )),
            Arc::new(Float32Array::from_iter_values(n.iter().map(|r| r.jaccard))),
        ],
    )?;
    write_table(&path, b, 65_536)?;

    let text = serde_json::to_string_pretty(summary).expect("summary serialises");
    write_atomic(&summary_path, text.as_bytes())
}

/// A feature store read into memory.
#[derive(Debug)]
pub struct FeatureStore {
    /// The directory it was read from.
    pub dir: PathBuf,
    /// The contents of `summary.json`.
    pub summary: Summary,
    /// The rows of `features.parquet`, in file order.
    pub features: Vec<FeatureRow>,
    /// The rows of `contexts.parquet`, sorted by feature.
    pub contexts: Vec<ContextRow>,
    /// The rows of `neighbours.parquet`, sorted by feature.
    pub neighbours: Vec<NeighbourRow>,
}

pub(crate) fn read_batches(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let pq = |source| StoreError::Parquet {
        path: path.to_owned(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(pq)?
        .with_batch_size(65_536)
        .build()
        .map_err(pq)?;
    collect_batches(path, reader)
}

/// Every batch a built reader yields, with `path` named in an error.
fn collect_batches(path: &Path, reader: ParquetRecordBatchReader) -> Result<Vec<RecordBatch>> {
    reader
        .map(|b| {
            b.map_err(|source| StoreError::Arrow {
                path: path.to_owned(),
                source,
            })
        })
        .collect()
}

/// Column access that names the file and column when something is off.
pub(crate) struct Cols<'a> {
    pub(crate) path: &'a Path,
    pub(crate) batch: &'a RecordBatch,
}

impl<'a> Cols<'a> {
    fn get(&self, name: &str) -> Result<&'a ArrayRef> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| StoreError::Schema {
                path: self.path.to_owned(),
                message: format!("column `{name}` is missing"),
            })
    }
    pub(crate) fn typed<T: 'static>(&self, name: &str) -> Result<&'a T> {
        self.get(name)?
            .as_any()
            .downcast_ref::<T>()
            .ok_or_else(|| StoreError::Schema {
                path: self.path.to_owned(),
                message: format!(
                    "column `{name}` has type {}",
                    self.get(name).unwrap().data_type()
                ),
            })
    }
    pub(crate) fn list(&self, name: &str) -> Result<&'a ListArray> {
        self.typed::<ListArray>(name)
    }
    /// A column that tables written before it existed lack: `None` then, an error only when it
    /// is there with the wrong type.
    pub(crate) fn optional<T: 'static>(&self, name: &str) -> Result<Option<&'a T>> {
        match self.batch.column_by_name(name) {
            None => Ok(None),
            Some(_) => self.typed::<T>(name).map(Some),
        }
    }
}

pub(crate) fn u32s(l: &ListArray, i: usize) -> Vec<u32> {
    l.value(i).as_primitive::<UInt32Type>().values().to_vec()
}
pub(crate) fn f32s(l: &ListArray, i: usize) -> Vec<f32> {
    l.value(i).as_primitive::<Float32Type>().values().to_vec()
}
fn strs(l: &ListArray, i: usize) -> Vec<String> {
    let v = l.value(i);
    let s = v.as_string::<i32>();
    (0..s.len()).map(|j| s.value(j).to_owned()).collect()
}

impl FeatureStore {
    /// Opens `dir` and reads all three tables, refusing an incomplete store (no summary) with
    /// what produces one.
    pub fn open(dir: &Path) -> Result<FeatureStore> {
        let summary = read_summary(dir)?;
        Ok(FeatureStore {
            dir: dir.to_owned(),
            summary,
            features: read_features(dir)?,
            contexts: read_contexts(&dir.join(CONTEXTS_FILE), None)?,
            neighbours: read_neighbours(dir)?,
        })
    }
}

/// Reads `summary.json`: the store's completeness mark and its figures across features.
pub fn read_summary(dir: &Path) -> Result<Summary> {
    let summary_path = dir.join(SUMMARY_FILE);
    let text = std::fs::read_to_string(&summary_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::Schema {
                path: summary_path.clone(),
                message: "no feature store here (or an interrupted one); run `saescope analyze` to make it".into(),
            }
        } else {
            StoreError::io(&summary_path, e)
        }
    })?;
    let summary: Summary = serde_json::from_str(&text).map_err(|e| StoreError::Schema {
        path: summary_path.clone(),
        message: e.to_string(),
    })?;
    if summary.format_version != FEATURE_STORE_VERSION {
        return Err(StoreError::UnsupportedVersion {
            path: summary_path,
            found: summary.format_version,
            supported: FEATURE_STORE_VERSION,
        });
    }
    Ok(summary)
}

/// Reads `features.parquet`.
pub fn read_features(dir: &Path) -> Result<Vec<FeatureRow>> {
    let mut features = Vec::new();
    let path = dir.join(FEATURES_FILE);
    for b in read_batches(&path)? {
        let c = Cols {
            path: &path,
            batch: &b,
        };
        let feature = c.typed::<UInt32Array>("feature")?;
        let count = c.typed::<UInt64Array>("count")?;
        let density = c.typed::<arrow::array::Float64Array>("density")?;
        let mean = c.typed::<Float32Array>("mean_act")?;
        let max = c.typed::<Float32Array>("max_act")?;
        let hist = c.list("act_hist")?;
        let hist_max = c.typed::<Float32Array>("act_hist_max")?;
        let (ti, tv, tt) = (
            c.list("logit_top_ids")?,
            c.list("logit_top_values")?,
            c.list("logit_top_tokens")?,
        );
        let (bi, bv, bt) = (
            c.list("logit_bottom_ids")?,
            c.list("logit_bottom_values")?,
            c.list("logit_bottom_tokens")?,
        );
        let lh = c.list("logit_hist")?;
        let (lmin, lmax) = (
            c.typed::<Float32Array>("logit_hist_min")?,
            c.typed::<Float32Array>("logit_hist_max")?,
        );
        let heads = c.list("head_share")?;
        for i in 0..b.num_rows() {
            features.push(FeatureRow {
                feature: feature.value(i),
                count: count.value(i),
                density: density.value(i),
                mean_act: mean.value(i),
                max_act: max.value(i),
                act_hist: u32s(hist, i),
                act_hist_max: hist_max.value(i),
                logit_top_ids: u32s(ti, i),
                logit_top_values: f32s(tv, i),
                logit_top_tokens: strs(tt, i),
                logit_bottom_ids: u32s(bi, i),
                logit_bottom_values: f32s(bv, i),
                logit_bottom_tokens: strs(bt, i),
                logit_hist: u32s(lh, i),
                logit_hist_min: lmin.value(i),
                logit_hist_max: lmax.value(i),
                head_share: f32s(heads, i),
            });
        }
    }
    Ok(features)
}

/// Reads `neighbours.parquet`.
pub fn read_neighbours(dir: &Path) -> Result<Vec<NeighbourRow>> {
    let mut neighbours = Vec::new();
    let path = dir.join(NEIGHBOURS_FILE);
    for b in read_batches(&path)? {
        let c = Cols {
            path: &path,
            batch: &b,
        };
        let feature = c.typed::<UInt32Array>("feature")?;
        let rank = c.typed::<UInt8Array>("rank")?;
        let nb = c.typed::<UInt32Array>("neighbour")?;
        let cos = c.typed::<Float32Array>("cosine")?;
        let co = c.typed::<UInt64Array>("cooccurrence")?;
        let jac = c.typed::<Float32Array>("jaccard")?;
        for i in 0..b.num_rows() {
            neighbours.push(NeighbourRow {
                feature: feature.value(i),
                rank: rank.value(i),
                neighbour: nb.value(i),
                cosine: cos.value(i),
                cooccurrence: co.value(i),
                jaccard: jac.value(i),
            });
        }
    }
    Ok(neighbours)
}

/// Decodes contexts from `batches` of `path`, keeping those of feature `only` if given.
fn contexts_from(
    path: &Path,
    batches: Vec<RecordBatch>,
    only: Option<u32>,
) -> Result<Vec<ContextRow>> {
    let mut contexts = Vec::new();
    for b in batches {
        let c = Cols { path, batch: &b };
        let feature = c.typed::<UInt32Array>("feature")?;
        let interval = c.typed::<Int16Array>("interval")?;
        let rank = c.typed::<UInt16Array>("rank")?;
        let token_index = c.typed::<UInt64Array>("token_index")?;
        let activation = c.typed::<Float32Array>("activation")?;
        let focus = c.typed::<UInt16Array>("focus")?;
        let (ids, toks, acts) = (c.list("token_ids")?, c.list("tokens")?, c.list("acts")?);
        for i in 0..b.num_rows() {
            if only.is_some_and(|f| f != feature.value(i)) {
                continue;
            }
            let iv = interval.value(i);
            contexts.push(ContextRow {
                feature: feature.value(i),
                kind: if iv < 0 {
                    ContextKind::Top
                } else {
                    ContextKind::Interval(iv as u8)
                },
                rank: rank.value(i),
                token_index: token_index.value(i),
                activation: activation.value(i),
                focus: focus.value(i),
                token_ids: u32s(ids, i),
                tokens: strs(toks, i),
                acts: f32s(acts, i),
            });
        }
    }
    Ok(contexts)
}

/// Reads a contexts table whole, or only feature `only`'s rows (still decoding every group).
pub fn read_contexts(path: &Path, only: Option<u32>) -> Result<Vec<ContextRow>> {
    contexts_from(path, read_batches(path)?, only)
}

/// `contexts.parquet` opened for reading one feature at a time: the footer is read once, and
/// each read decodes only the row groups whose `feature` statistics can hold the feature (the
/// table is sorted by feature), a few thousand rows instead of the table.
pub struct ContextsFile {
    path: PathBuf,
    meta: parquet::arrow::arrow_reader::ArrowReaderMetadata,
    /// (min, max) feature of each row group; `None` where statistics are missing.
    ranges: Vec<Option<(u32, u32)>>,
}

impl ContextsFile {
    /// Opens `DIR/contexts.parquet`, reading its footer and each row group's feature range.
    pub fn open(dir: &Path) -> Result<ContextsFile> {
        let path = dir.join(CONTEXTS_FILE);
        let file = std::fs::File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        let meta =
            parquet::arrow::arrow_reader::ArrowReaderMetadata::load(&file, Default::default())
                .map_err(|source| StoreError::Parquet {
                    path: path.clone(),
                    source,
                })?;
        let col = meta
            .metadata()
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.name() == "feature")
            .ok_or_else(|| StoreError::Schema {
                path: path.clone(),
                message: "column `feature` is missing".into(),
            })?;
        let ranges = meta
            .metadata()
            .row_groups()
            .iter()
            .map(|rg| match rg.column(col).statistics() {
                Some(parquet::file::statistics::Statistics::Int32(st)) => st
                    .min_opt()
                    .zip(st.max_opt())
                    .map(|(&lo, &hi)| (lo as u32, hi as u32)),
                _ => None,
            })
            .collect();
        Ok(ContextsFile { path, meta, ranges })
    }

    /// Feature `f`'s contexts, in file order (top contexts, then interval samples).
    pub fn of(&self, f: u32) -> Result<Vec<ContextRow>> {
        let groups: Vec<usize> = self
            .ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_none_or(|(lo, hi)| lo <= f && f <= hi))
            .map(|(i, _)| i)
            .collect();
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let pq = |source| StoreError::Parquet {
            path: self.path.clone(),
            source,
        };
        let file = std::fs::File::open(&self.path).map_err(|e| StoreError::io(&self.path, e))?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone())
            .with_row_groups(groups)
            .with_batch_size(8_192)
            .build()
            .map_err(pq)?;
        contexts_from(&self.path, collect_batches(&self.path, reader)?, Some(f))
    }
}
