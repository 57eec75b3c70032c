//! `manifest.json`: what a run holds and how to trust it.
//!
//! The manifest is the only file a reader needs to understand a run: which model and tokenizer
//! produced it, which hook points it holds with their shapes, the shards with their row counts and
//! checksums, and whether the run is complete. It is rewritten atomically after every shard, so at
//! any moment it describes exactly the shards that are fully on disk.

use crate::error::{Result, StoreError};
use crate::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The value of the manifest's `format` field.
pub const FORMAT: &str = "saescope.activations";
/// The manifest layout this version of saescope writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name inside a run directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The folder of a run harvested in parts that holds the parts (see [`crate::parts`]).
pub const PARTS_DIR: &str = "parts";

/// How one hook point's vectors are stored on disk. Readers always return f32.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Arrow `Float32`: exact.
    #[default]
    F32,
    /// Arrow `Float16` (IEEE half): half the disk, ~3 significant digits, range ±65504.
    F16,
    /// bfloat16, stored as 2-byte little-endian bit patterns in an Arrow `FixedSizeBinary(2)`
    /// (Arrow has no bf16 type, and `UInt16` would take 4 bytes in Parquet): half the disk, f32's
    /// range, ~2 significant digits. The field metadata `saescope.dtype = bf16` marks it.
    Bf16,
}

impl Dtype {
    /// Bytes one stored value takes: 4 for `f32`, 2 for `f16` and `bf16`.
    pub fn size_bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// The name in the manifest and the `saescope.dtype` field metadata: `f32`, `f16`, `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// A dtype name other than f32, f16 or bf16.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype `{0}` (expected f32, f16 or bf16)")]
pub struct UnknownDtype(pub String);

impl std::str::FromStr for Dtype {
    type Err = UnknownDtype;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownDtype> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            other => Err(UnknownDtype(other.to_owned())),
        }
    }
}

/// One named hook point, e.g. `blocks.3.hook_resid_post` with shape `[576]`, or
/// `blocks.3.attn.hook_z` with shape `[9, 64]` (heads x d_head, stored flattened row-major).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HookInfo {
    /// TransformerLens-style name, also the activation column's, e.g. `blocks.6.hook_resid_post`.
    pub name: String,
    /// Per-token shape, e.g. `[576]`, or `[9, 64]` for per-head `z`; every entry positive.
    pub shape: Vec<usize>,
    /// How the values are stored on disk; readers always return f32.
    pub dtype: Dtype,
}

impl HookInfo {
    /// Number of values per token (the product of the shape).
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The model that produced the activations.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ModelInfo {
    /// Human-readable identity, e.g. `SmolLM2-135M-Instruct`.
    pub name: String,
    /// Architecture family, e.g. `llama` or `gpt2`.
    #[serde(default)]
    pub architecture: Option<String>,
    /// The weights file (or directory) as given by the user.
    #[serde(default)]
    pub file: Option<String>,
    /// SHA-256 of the weights file, so a run can be tied to exact weights.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Compute dtype of the forward pass (`f32`, `bf16`).
    #[serde(default)]
    pub compute_dtype: Option<String>,
}

/// The tokenizer that produced the token ids.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct TokenizerInfo {
    /// Where the tokenizer came from, e.g. `gguf:gpt2/smollm`.
    pub name: String,
    /// Number of token ids in the tokenizer's vocabulary.
    pub vocab_size: u32,
    /// Id of the beginning-of-sequence token, or `None` if the tokenizer has none.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// Id of the end-of-sequence token, or `None` if the tokenizer has none.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

/// Where a context's first position comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BosHandling {
    /// Every context starts with the BOS token (position 0 holds no document token).
    #[default]
    PrependEachContext,
    /// Contexts are filled with document tokens only.
    None,
}

/// How the corpus was cut into the model's input.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ContextInfo {
    /// Tokens per packed context, BOS included; the last context may be shorter.
    pub ctx_len: u32,
    /// Whether position 0 of every context holds BOS.
    pub bos: BosHandling,
}

/// Where the text came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CorpusInfo {
    /// Short name of the corpus (e.g. `brown`), or the path of the user's files.
    pub name: String,
    /// Files, packages or URLs of the text, as recorded by the harvester.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Documents in the corpus, or `None` when not recorded.
    #[serde(default)]
    pub documents: Option<u64>,
    /// Free-text description of the corpus or of how it was packed, if any.
    #[serde(default)]
    pub description: Option<String>,
}

/// What the creator of a run declares up front; the writer adds the shards.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct RunSpec {
    /// The model whose activations the run holds.
    pub model: ModelInfo,
    /// The tokenizer that produced the token ids.
    pub tokenizer: TokenizerInfo,
    /// How the corpus is cut into contexts.
    pub context: ContextInfo,
    /// The hook points to store, one activation column each, in column order.
    pub hooks: Vec<HookInfo>,
    /// Where the text comes from.
    pub corpus: CorpusInfo,
    /// Free-form settings of the producer (e.g. the harvest command line), kept for provenance.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Compression of the activation columns.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase", tag = "codec", content = "level")]
pub enum Compression {
    /// Uncompressed: activations barely compress, and this reads fastest.
    #[default]
    None,
    /// Zstandard at the given level (1-22).
    Zstd(i32),
}

/// How rows are cut into shards and row groups; fixed for the life of a run so that a resumed
/// run lays out exactly like an uninterrupted one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Layout {
    /// Tokens per shard; only the last shard may hold fewer.
    pub rows_per_shard: u64,
    /// Tokens per Parquet row group in both files of a shard (the unit of shuffled reading).
    pub rows_per_row_group: u64,
    /// Compression of the activation files; token files are always zstd.
    pub compression: Compression,
}

/// One file of a shard, with what it must look like on disk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FileInfo {
    /// Path relative to the run directory.
    pub path: String,
    /// Size of the file in bytes; a reader refuses a file of any other size.
    pub bytes: u64,
    /// SHA-256 of the file, as 64 lower-case hex digits.
    pub sha256: String,
}

/// One shard: a contiguous range of tokens, split into an activation file and a token file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShardInfo {
    /// Position in [`Manifest::shards`], from 0; also the number in the shard's file names.
    pub index: u32,
    /// Global index of the shard's first token.
    pub first_token: u64,
    /// Tokens in the shard: the rows of each of its two files (never 0).
    pub rows: u64,
    /// The activation file, `activations/part-NNNNN.parquet`.
    pub activations: FileInfo,
    /// The token file, `tokens/part-NNNNN.parquet`.
    pub tokens: FileInfo,
}

/// Which part of a run harvested in parts a manifest describes (`saescope harvest --part I/N`).
///
/// A run's contexts are cut into `count` contiguous ranges of whole batches; part `index` holds
/// the tokens `[Manifest::first_token, Manifest::first_token + tokens)` of the run a single
/// machine would have written, with the same token indices, so that merging the parts only lists
/// their shards in one manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PartInfo {
    /// This part's number, from 0.
    pub index: u32,
    /// How many parts the run is cut into.
    pub count: u32,
    /// Tokens this part holds once complete.
    pub tokens: u64,
    /// Tokens of the whole run: all parts together.
    pub run_tokens: u64,
}

/// The whole `manifest.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Always [`FORMAT`] (`saescope.activations`).
    pub format: String,
    /// Always [`FORMAT_VERSION`]; a reader refuses any other version.
    pub format_version: u32,
    /// The saescope version that wrote the run.
    pub created_by: String,
    /// The model that produced the activations.
    pub model: ModelInfo,
    /// The tokenizer that produced the token ids.
    pub tokenizer: TokenizerInfo,
    /// How the corpus was cut into contexts.
    pub context: ContextInfo,
    /// The hook points stored, one activation column each, in column order.
    pub hooks: Vec<HookInfo>,
    /// Where the text came from.
    pub corpus: CorpusInfo,
    /// Free-form settings of the producer, as given in [`RunSpec::extra`].
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// How rows are cut into shards and row groups; fixed for the life of the run.
    pub layout: Layout,
    /// The complete shards, in token order; a shard still being written is not listed.
    pub shards: Vec<ShardInfo>,
    /// Tokens in the listed shards (the sum of their `rows`); a resume continues from here.
    pub total_tokens: u64,
    /// True once the producer finished; an incomplete run can be read and resumed.
    pub complete: bool,
    /// Global index of the first token: 0 for a run, where a part starts for a part of one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_token: u64,
    /// Set when this manifest describes one part of a run harvested in parts, not a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<PartInfo>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Manifest {
    pub(crate) fn new(spec: RunSpec, layout: Layout) -> Self {
        Manifest {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            created_by: format!("saescope {}", env!("CARGO_PKG_VERSION")),
            model: spec.model,
            tokenizer: spec.tokenizer,
            context: spec.context,
            hooks: spec.hooks,
            corpus: spec.corpus,
            extra: spec.extra,
            layout,
            shards: Vec::new(),
            total_tokens: 0,
            complete: false,
            first_token: 0,
            part: None,
        }
    }

    /// What the run's creator declared (everything but the layout and the shards).
    pub fn spec(&self) -> RunSpec {
        RunSpec {
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone(),
            context: self.context.clone(),
            hooks: self.hooks.clone(),
            corpus: self.corpus.clone(),
            extra: self.extra.clone(),
        }
    }

    /// Whether `dir` (a folder, or a URL on object storage) holds a `manifest.json`.
    pub fn exists_in(dir: &Path) -> Result<bool> {
        crate::place::Place::of(dir)?.has(MANIFEST_FILE)
    }

    /// Reads and validates `DIR/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        if crate::remote::is_url(dir) {
            return Self::load_remote(&crate::remote::Remote::open(dir)?).map(|(m, _)| m);
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let path = dir.to_owned();
                return Err(if dir.join(PARTS_DIR).is_dir() {
                    StoreError::Unmerged { path }
                } else {
                    StoreError::NotARun { path }
                });
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        Self::from_json(&bytes, &path)
    }

    /// Reads and validates the manifest of a run on object storage, with the version read, for
    /// a writer's conditional update.
    pub(crate) fn load_remote(
        remote: &crate::remote::Remote,
    ) -> Result<(Self, crate::remote::Version)> {
        let path = remote.path_of(MANIFEST_FILE);
        match remote.get_versioned(MANIFEST_FILE)? {
            Some((bytes, version)) => Ok((Self::from_json(&bytes, &path)?, version)),
            None => {
                let path = PathBuf::from(remote.url());
                Err(if remote.list_dirs("")?.iter().any(|d| d == PARTS_DIR) {
                    StoreError::Unmerged { path }
                } else {
                    remote.check()?;
                    StoreError::NotARun { path }
                })
            }
        }
    }

    /// Parses and validates a manifest's JSON; `path` names it in errors.
    fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        let path = path.to_owned();
        // Check the version before the full schema, so an old or newer manifest gets the right error.
        if let Ok(head) = serde_json::from_slice::<VersionProbe>(bytes)
            && let Some(found) = head.format_version
            && found != FORMAT_VERSION
        {
            return Err(StoreError::UnsupportedVersion {
                path,
                found,
                supported: FORMAT_VERSION,
            });
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let manifest: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let message = e.inner().to_string();
            // serde reports a missing field at its parent: name the field itself.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let field = match (e.path().to_string().as_str(), missing) {
                (".", Some(name)) => name.to_owned(),
                (p, Some(name)) => format!("{p}.{name}"),
                (p, None) => p.to_owned(),
            };
            StoreError::Manifest {
                path: path.clone(),
                field,
                message,
            }
        })?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    /// Writes `DIR/manifest.json` atomically.
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join(MANIFEST_FILE), &self.to_json())
    }

    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest always serializes")
    }

    /// Checks the invariants that serde cannot: the things a reader relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, message: String| StoreError::Manifest {
            path: path.to_owned(),
            field: field.to_owned(),
            message,
        };
        if self.format != FORMAT {
            return Err(bad(
                "format",
                format!("expected `{FORMAT}`, found `{}`", self.format),
            ));
        }
        if self.hooks.is_empty() {
            return Err(bad("hooks", "a run needs at least one hook point".into()));
        }
        let mut names = HashSet::new();
        for (i, h) in self.hooks.iter().enumerate() {
            if h.name.is_empty() || h.name == "token_index" {
                return Err(bad(
                    &format!("hooks[{i}].name"),
                    format!("`{}` is not a usable hook name", h.name),
                ));
            }
            if !names.insert(h.name.as_str()) {
                return Err(bad(
                    &format!("hooks[{i}].name"),
                    format!("`{}` appears twice", h.name),
                ));
            }
            if h.shape.is_empty() || h.dim() == 0 || h.dim() > i32::MAX as usize {
                return Err(bad(
                    &format!("hooks[{i}].shape"),
                    format!("shape {:?} has no usable size", h.shape),
                ));
            }
        }
        if self.layout.rows_per_shard == 0 || self.layout.rows_per_row_group == 0 {
            return Err(bad("layout", "row counts must be positive".into()));
        }
        if let Some(p) = &self.part {
            if p.count == 0 || p.index >= p.count {
                return Err(bad(
                    "part.index",
                    format!("part {} of {} does not exist", p.index, p.count),
                ));
            }
            if self.first_token + p.tokens > p.run_tokens {
                return Err(bad(
                    "part.tokens",
                    format!(
                        "tokens {}..{} lie past the run's {} tokens",
                        self.first_token,
                        self.first_token + p.tokens,
                        p.run_tokens
                    ),
                ));
            }
        } else if self.first_token != 0 {
            return Err(bad(
                "first_token",
                "only a part of a run starts past token 0".into(),
            ));
        }
        let mut next = self.first_token;
        for (i, s) in self.shards.iter().enumerate() {
            if s.index as usize != i {
                return Err(bad(
                    &format!("shards[{i}].index"),
                    format!("expected {i}, found {}", s.index),
                ));
            }
            if s.first_token != next {
                return Err(bad(
                    &format!("shards[{i}].first_token"),
                    format!(
                        "expected {next} (the end of the previous shard), found {}",
                        s.first_token
                    ),
                ));
            }
            if s.rows == 0 {
                return Err(bad(
                    &format!("shards[{i}].rows"),
                    "a shard cannot be empty".into(),
                ));
            }
            for (which, f) in [("activations", &s.activations), ("tokens", &s.tokens)] {
                let p = Path::new(&f.path);
                if p.is_absolute()
                    || p.components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(bad(
                        &format!("shards[{i}].{which}.path"),
                        format!("`{}` must be a plain path inside the run directory", f.path),
                    ));
                }
                if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(
                        &format!("shards[{i}].{which}.sha256"),
                        format!("`{}` is not a hex sha256", f.sha256),
                    ));
                }
            }
            next += s.rows;
        }
        if self.total_tokens != next - self.first_token {
            return Err(bad(
                "total_tokens",
                format!(
                    "the shards hold {} tokens, but total_tokens says {}",
                    next - self.first_token,
                    self.total_tokens
                ),
            ));
        }
        if let Some(p) = &self.part
            && self.total_tokens > p.tokens
        {
            return Err(bad(
                "total_tokens",
                format!(
                    "the part holds {} tokens, more than its {}",
                    self.total_tokens, p.tokens
                ),
            ));
        }
        Ok(())
    }

    /// Splits the shards into training and held-out sets: the last `ceil(fraction * n)` shards
    /// are held out (at least one when `fraction > 0` and there are two or more shards).
    /// Splitting by whole shards keeps the two sets disjoint whatever the shuffling.
    pub fn split_shards(&self, heldout_fraction: f64) -> (Vec<usize>, Vec<usize>) {
        let n = self.shards.len();
        if self.extra.contains_key("parts") && heldout_fraction > 0.0 && n >= 2 {
            return self.split_shards_by_tokens(heldout_fraction);
        }
        // The epsilon keeps 0.2 x 5 from rounding up to 2 through float error.
        let mut held = (heldout_fraction.clamp(0.0, 1.0) * n as f64 - 1e-9)
            .ceil()
            .max(0.0) as usize;
        if heldout_fraction > 0.0 && n >= 2 {
            held = held.clamp(1, n - 1);
        }
        let held = held.min(n);
        ((0..n - held).collect(), (n - held..n).collect())
    }

    /// A merged run's shards differ in size (each part's last is short), so its held-out
    /// shards are the last ones that together hold the fraction of its tokens: the share a run
    /// harvested whole would hold out, not that of a count of shards.
    fn split_shards_by_tokens(&self, heldout_fraction: f64) -> (Vec<usize>, Vec<usize>) {
        let n = self.shards.len();
        let want = (heldout_fraction.min(1.0) * self.total_tokens as f64).ceil() as u64;
        let mut held = 0;
        let mut tokens = 0;
        while held < n - 1 && (held == 0 || tokens < want) {
            tokens += self.shards[n - 1 - held].rows;
            held += 1;
        }
        ((0..n - held).collect(), (n - held..n).collect())
    }

    /// Splits the run's tokens into training and held-out sets that never share a token. With
    /// two or more shards the split is by whole shards ([`Manifest::split_shards`]); with one, by
    /// whole contexts inside it: the last `ceil(fraction * contexts)` contexts are held out (at
    /// least one, and at least one is kept for training). A run of a single context, or a
    /// fraction of 0, leaves the held-out set empty.
    pub fn heldout_split(&self, heldout_fraction: f64) -> HeldoutSplit {
        let all = 0..self.total_tokens;
        if self.shards.len() != 1 {
            let (train, held) = self.split_shards(heldout_fraction);
            let span = |shards: &[usize]| match (shards.first(), shards.last()) {
                (Some(&a), Some(&b)) => {
                    self.shards[a].first_token..self.shards[b].first_token + self.shards[b].rows
                }
                _ => 0..0,
            };
            return HeldoutSplit {
                train: TokenSet {
                    tokens: span(&train),
                    shards: train,
                },
                heldout: TokenSet {
                    tokens: span(&held),
                    shards: held,
                },
            };
        }
        let ctx = u64::from(self.context.ctx_len).max(1);
        let contexts = self.total_tokens.div_ceil(ctx);
        let held = if heldout_fraction > 0.0 && contexts >= 2 {
            ((heldout_fraction.min(1.0) * contexts as f64 - 1e-9).ceil() as u64)
                .clamp(1, contexts - 1)
        } else {
            0
        };
        let boundary = ((contexts - held) * ctx).min(self.total_tokens);
        HeldoutSplit {
            train: TokenSet {
                shards: vec![0],
                tokens: all.start..boundary,
            },
            heldout: TokenSet {
                shards: if held > 0 { vec![0] } else { Vec::new() },
                tokens: boundary..all.end,
            },
        }
    }
}

/// Some of a run's tokens: whole shards, of which only the tokens in `tokens` count (the
/// shards' own range when a split is by shard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSet {
    /// The shards to read, in order.
    pub shards: Vec<usize>,
    /// The token indices kept from them.
    pub tokens: std::ops::Range<u64>,
}

impl TokenSet {
    /// Whether the set holds no token.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty() || self.tokens.is_empty()
    }
}

/// A run's tokens split into a training set and a held-out set with no token in common.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldoutSplit {
    /// What training reads.
    pub train: TokenSet,
    /// What the final metrics are measured on.
    pub heldout: TokenSet,
}

#[derive(Deserialize)]
struct VersionProbe {
    format_version: Option<u32>,
}
