//! The harvester: streams a corpus through a model and writes the activations at chosen hook
//! points to an activation run.
//!
//! Documents are tokenized and packed into contexts of `ctx_len` tokens: BOS first, then
//! document tokens, with EOS after each document; a long document continues in the next
//! context. Contexts go through the model in fixed batches (batch `j` is always contexts
//! `j*B .. (j+1)*B`), so a resumed run recomputes exactly the batch it stopped in and writes
//! the same values an uninterrupted run would have.

use crate::corpus::{CorpusSource, Document};
use crate::error::{CorpusError, HarvestError, ModelError};
use crate::hooks::{HookPoint, Hooks};
use crate::model::Model;
use crate::tokenizer::TextTokenizer;
use saescope_store::{
    BosHandling, ContextInfo, CorpusInfo, Dtype, HookInfo, Manifest, ModelInfo, RunSpec, RunWriter,
    TokenRecord, TokenizerInfo, WriterOptions,
};
use std::collections::VecDeque;
use std::path::Path;
use tch::{Kind, Tensor};

type Result<T> = std::result::Result<T, HarvestError>;

/// What to harvest and how to store it.
#[derive(Clone, Debug)]
pub struct HarvestConfig {
    /// Hook points to capture (at least one), in the order the run lists them.
    pub hooks: Vec<HookPoint>,
    /// Tokens per context, BOS included.
    pub ctx_len: usize,
    /// Contexts per forward pass.
    pub batch_contexts: usize,
    /// Stop after this many tokens (BOS positions count); `None` harvests the whole corpus.
    pub max_tokens: Option<u64>,
    /// How activations are stored on disk.
    pub storage: Dtype,
    /// Shard and row-group sizes and compression of a new run (unused when resuming).
    pub writer: WriterOptions,
}

/// What a finished (or resumed and finished) harvest did.
#[derive(Debug)]
pub struct HarvestReport {
    /// The run's manifest as finished.
    pub manifest: Manifest,
    /// Tokens written by this invocation (less than the total when resuming).
    pub tokens_this_run: u64,
    /// Invalid UTF-8 sequences replaced by U+FFFD in the documents read.
    pub replaced_sequences: usize,
    /// Non-empty documents taken from the corpus, counted from its start even when resuming.
    pub documents: u64,
}

/// One packed context: token ids and where each came from.
pub struct Context {
    /// Token ids, BOS first: `ctx_len` of them, fewer only in the corpus's last context.
    pub ids: Vec<i64>,
    /// Each token's provenance (context, document, positions), aligned with `ids`.
    pub records: Vec<TokenRecord>,
}

/// Packs documents into contexts: BOS, then document tokens with EOS after each document.
pub struct Packer<'a> {
    docs: Box<dyn Iterator<Item = std::result::Result<Document, CorpusError>>>,
    tok: &'a TextTokenizer,
    ctx_len: usize,
    /// (token, doc id, position in doc); `None` for inserted EOS tokens.
    buf: VecDeque<(u32, Option<(u64, u32)>)>,
    next_doc: u64,
    next_context: u64,
    replaced: usize,
}

impl<'a> Packer<'a> {
    /// A packer over `corpus`'s documents into contexts of `ctx_len` tokens, BOS included;
    /// fails if the corpus cannot be opened.
    pub fn new(corpus: &CorpusSource, tok: &'a TextTokenizer, ctx_len: usize) -> Result<Self> {
        Ok(Packer {
            docs: corpus.documents()?,
            tok,
            ctx_len,
            buf: VecDeque::new(),
            next_doc: 0,
            next_context: 0,
            replaced: 0,
        })
    }

    /// The next context, or `None` when the corpus is used up (the last may be short).
    pub fn next_context(&mut self) -> Result<Option<Context>> {
        let body = self.ctx_len - 1; // one position for BOS
        while self.buf.len() < body {
            let Some(doc) = self.docs.next() else { break };
            let doc = doc?;
            self.replaced += doc.replaced;
            let ids = self.tok.encode(&doc.text)?;
            if ids.is_empty() {
                continue; // an empty document contributes nothing, not even its EOS
            }
            let d = self.next_doc;
            self.next_doc += 1;
            self.buf.extend(
                ids.into_iter()
                    .enumerate()
                    .map(|(p, t)| (t, Some((d, p as u32)))),
            );
            if let Some(eos) = self.tok.eos {
                self.buf.push_back((eos, None));
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let c = self.next_context;
        self.next_context += 1;
        let bos = self.tok.bos.unwrap_or(0);
        let mut ids = vec![bos as i64];
        let mut records = vec![TokenRecord {
            context_id: c,
            context_pos: 0,
            doc_id: None,
            doc_pos: None,
            token_id: bos,
        }];
        for (i, (t, from)) in self.buf.drain(..body.min(self.buf.len())).enumerate() {
            ids.push(t as i64);
            records.push(TokenRecord {
                context_id: c,
                context_pos: i as u32 + 1,
                doc_id: from.map(|f| f.0),
                doc_pos: from.map(|f| f.1),
                token_id: t,
            });
        }
        Ok(Some(Context { ids, records }))
    }
}

/// The run description of a harvest, checked against an existing run when resuming.
pub fn run_spec(
    model: &Model,
    tok: &TextTokenizer,
    model_info: ModelInfo,
    corpus: &CorpusSource,
    cfg: &HarvestConfig,
) -> RunSpec {
    let hooks = cfg
        .hooks
        .iter()
        .map(|p| HookInfo {
            name: p.to_string(),
            shape: model.hook_shape(p.kind),
            dtype: cfg.storage,
        })
        .collect();
    let mut extra = serde_json::Map::new();
    extra.insert("batch_contexts".into(), cfg.batch_contexts.into());
    extra.insert("max_tokens".into(), cfg.max_tokens.into());
    RunSpec {
        model: model_info,
        tokenizer: TokenizerInfo {
            name: tok.name.clone(),
            vocab_size: tok.vocab_size() as u32,
            bos_token_id: tok.bos,
            eos_token_id: tok.eos,
        },
        context: ContextInfo {
            ctx_len: cfg.ctx_len as u32,
            bos: BosHandling::PrependEachContext,
        },
        hooks,
        corpus: CorpusInfo {
            name: corpus.name(),
            sources: vec![corpus.name()],
            documents: None,
            description: Some(
                "documents packed into contexts: BOS first, EOS after each document".into(),
            ),
        },
        extra,
    }
}

/// The settings a resumed run must share with the original, as (field, value) pairs.
fn identity(m: &RunSpec) -> Vec<(&'static str, String)> {
    vec![
        ("model.sha256", format!("{:?}", m.model.sha256)),
        (
            "model.compute_dtype",
            format!("{:?}", m.model.compute_dtype),
        ),
        ("tokenizer", m.tokenizer.name.clone()),
        ("context.ctx_len", m.context.ctx_len.to_string()),
        (
            "hooks",
            m.hooks
                .iter()
                .map(|h| format!("{}:{}", h.name, h.dtype.name()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("corpus", m.corpus.name.clone()),
        (
            "batch_contexts",
            m.extra
                .get("batch_contexts")
                .map(|v| v.to_string())
                .unwrap_or_default(),
        ),
    ]
}

/// Checks the hooks and context length against the model before any work.
pub fn validate(model: &Model, cfg: &HarvestConfig) -> Result<()> {
    if cfg.hooks.is_empty() {
        return Err(HarvestError::Config(
            "no hook points to harvest (use --hooks)".into(),
        ));
    }
    if let Some(p) = cfg.hooks.iter().find(|p| p.layer >= model.n_layers()) {
        return Err(HarvestError::Model(ModelError::UnknownHook {
            point: p.to_string(),
            layers: model.n_layers(),
        }));
    }
    if cfg.ctx_len < 2 || cfg.ctx_len > model.ctx_len() {
        return Err(HarvestError::Config(format!(
            "context length {} is outside 2..={} (the model's context)",
            cfg.ctx_len,
            model.ctx_len()
        )));
    }
    if cfg.batch_contexts == 0 {
        return Err(HarvestError::Config("batch size must be positive".into()));
    }
    Ok(())
}

/// One batch's rows on their way to the shard writer: its token records, each hook's values
/// [rows, width] in f32 on the CPU, and the rows the run takes.
struct Written {
    records: Vec<TokenRecord>,
    values: Vec<Tensor>,
    rows: std::ops::Range<usize>,
}

/// The shard writer's thread: appends each batch's rows to the run until the harvest stops
/// sending, and hands the writer back to be finished. Its first error ends it (the harvest sees
/// the channel close and reports it).
fn write_batches(
    mut writer: RunWriter,
    batches: std::sync::mpsc::Receiver<Written>,
    dims: &[usize],
) -> Result<RunWriter> {
    for b in batches {
        let values: Vec<Vec<f32>> = b
            .values
            .iter()
            .map(|x| Vec::<f32>::try_from(x.view([-1])))
            .collect::<std::result::Result<_, _>>()?;
        let (from, to) = (b.rows.start, b.rows.end);
        let views: Vec<&[f32]> = values
            .iter()
            .zip(dims)
            .map(|(v, d)| &v[from * d..to * d])
            .collect();
        writer.append(&b.records[from..to], &views)?;
    }
    Ok(writer)
}

/// A model with its tokenizer and provenance: what turns text into activations.
pub struct Harvester<'a> {
    /// The model to run.
    pub model: &'a Model,
    /// Splits documents into tokens and gives the BOS and EOS ids; named in the manifest.
    pub tokenizer: &'a TextTokenizer,
    /// Recorded in the run's manifest (name, file, sha256, compute dtype).
    pub model_info: ModelInfo,
}

impl Harvester<'_> {
    /// Harvests `corpus` into the run at `out` (resuming it if `resume`). `progress` is called
    /// with the run's token count after each batch.
    pub fn run(
        &self,
        corpus: &CorpusSource,
        cfg: &HarvestConfig,
        out: &Path,
        resume: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<HarvestReport> {
        let (model, tok) = (self.model, self.tokenizer);
        validate(model, cfg)?;
        let spec = run_spec(model, tok, self.model_info.clone(), corpus, cfg);
        let mut packer = Packer::new(corpus, tok, cfg.ctx_len)?;
        // Read the first context before touching the output, so an empty corpus leaves no run behind.
        let Some(first) = packer.next_context()? else {
            return Err(HarvestError::EmptyCorpus(corpus.name()));
        };

        let writer = if resume {
            let w = RunWriter::resume(out)?;
            for ((field, a), (_, b)) in identity(&w.manifest().spec())
                .into_iter()
                .zip(identity(&spec))
            {
                if a != b {
                    return Err(HarvestError::Mismatch {
                        run: out.display().to_string(),
                        field: field.into(),
                        was: a,
                        now: b,
                    });
                }
            }
            w
        } else {
            RunWriter::create(out, spec, &cfg.writer)?
        };

        let start = writer.tokens_written();
        let limit = cfg.max_tokens.unwrap_or(u64::MAX);
        let ctx = cfg.ctx_len as u64;
        let b = cfg.batch_contexts as u64;
        // Every context but the corpus's last is full, so token t lies in context t / ctx_len.
        let first_batch_context = (start / ctx) / b * b;
        let mut skip = start - first_batch_context * ctx;

        let mut pending = Some(first);
        let mut accepted = start;
        let dims: Vec<usize> = cfg
            .hooks
            .iter()
            .map(|p| model.hook_shape(p.kind).iter().product())
            .collect();
        // Shards are encoded, checksummed and written on a thread of their own while the model
        // computes the next batch; one batch waits at most, so memory stays bounded.
        let (to_writer, batches) = std::sync::mpsc::sync_channel::<Written>(1);
        let writer = std::thread::scope(|scope| -> Result<RunWriter> {
            let thread = scope.spawn(move || write_batches(writer, batches, &dims));
            let computed = tch::no_grad(|| -> Result<()> {
                let mut index = 0u64; // index of the next context
                while accepted < limit {
                    let mut batch: Vec<Context> = Vec::with_capacity(cfg.batch_contexts);
                    while batch.len() < cfg.batch_contexts {
                        let next = match pending.take() {
                            Some(c) => Some(c),
                            None => packer.next_context()?,
                        };
                        let Some(c) = next else { break };
                        index += 1;
                        if index <= first_batch_context {
                            continue; // before the batch a resumed run restarts in
                        }
                        // Contexts in one forward pass must have one length; only the corpus's last is short.
                        if batch.first().is_some_and(|f| f.ids.len() != c.ids.len()) {
                            pending = Some(c);
                            index -= 1;
                            break;
                        }
                        batch.push(c);
                    }
                    if batch.is_empty() {
                        break;
                    }
                    let t = batch[0].ids.len() as i64;
                    let ids: Vec<i64> = batch.iter().flat_map(|c| c.ids.iter().copied()).collect();
                    let input = Tensor::from_slice(&ids).view([batch.len() as i64, t]);
                    let mut hooks = cfg.hooks.iter().fold(Hooks::new(), |h, &p| h.capture(p));
                    model.forward(&input, &mut hooks, false)?;
                    let rows = batch.len() * t as usize;
                    let values: Vec<Tensor> = cfg
                        .hooks
                        .iter()
                        .map(|&p| {
                            let x = hooks.take(p).expect("captured");
                            x.to_kind(Kind::Float)
                                .to_device(tch::Device::Cpu)
                                .contiguous()
                                .view([rows as i64, -1])
                        })
                        .collect();
                    // Rows this run already has; a resume can skip past a whole batch (the corpus's
                    // short last context runs as a batch of its own).
                    let from = (skip as usize).min(rows);
                    skip -= from as u64;
                    let to = rows.min(from + (limit - accepted) as usize);
                    if from < to {
                        let records: Vec<TokenRecord> = batch
                            .iter()
                            .flat_map(|c| c.records.iter().copied())
                            .collect();
                        let written = Written {
                            records,
                            values,
                            rows: from..to,
                        };
                        if to_writer.send(written).is_err() {
                            break; // the writer failed: its error is reported below
                        }
                        accepted += (to - from) as u64;
                    }
                    progress(accepted);
                }
                Ok(())
            });
            drop(to_writer);
            let written = thread.join().expect("the shard writer panicked");
            computed?;
            written
        })?;
        let documents = packer.next_doc;
        let replaced = packer.replaced;
        let manifest = writer.finish()?;
        Ok(HarvestReport {
            tokens_this_run: manifest.total_tokens - start,
            manifest,
            replaced_sequences: replaced,
            documents,
        })
    }
}
