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
use crate::parts::{CorpusLengths, PackerStart, Part, PartPlan};
use crate::tokenizer::TextTokenizer;
use saescope_store::{
    BosHandling, ContextInfo, CorpusInfo, Dtype, HookInfo, Manifest, ModelInfo, PartInfo, RunSpec,
    RunWriter, StoreError, TokenRecord, TokenizerInfo, WriterOptions, parts,
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
    /// Harvest only this part of the run, into `RUN/parts/` (see [`crate::parts`]).
    pub part: Option<Part>,
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
    /// For a part: the merged run, when this part was the last to finish.
    pub merged: Option<Manifest>,
    /// For a part: the parts not complete yet, which the merge waits for.
    pub waiting: Vec<u32>,
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
    /// Tokens of the next document that contexts before the packer's first already hold.
    drop_tokens: usize,
}

impl<'a> Packer<'a> {
    /// A packer over `corpus`'s documents into contexts of `ctx_len` tokens, BOS included;
    /// fails if the corpus cannot be opened.
    pub fn new(corpus: &CorpusSource, tok: &'a TextTokenizer, ctx_len: usize) -> Result<Self> {
        Self::starting_at(corpus, tok, ctx_len, PackerStart::default())
    }

    /// A packer whose first context is `start.context`, as a packer from the corpus's start
    /// would make it; the documents before it are read but not tokenized.
    pub fn starting_at(
        corpus: &CorpusSource,
        tok: &'a TextTokenizer,
        ctx_len: usize,
        start: PackerStart,
    ) -> Result<Self> {
        let mut docs = corpus.documents()?;
        for _ in 0..start.skip_documents {
            if let Some(doc) = docs.next() {
                doc?;
            }
        }
        Ok(Packer {
            docs,
            tok,
            ctx_len,
            buf: VecDeque::new(),
            next_doc: start.documents_before,
            next_context: start.context,
            replaced: 0,
            drop_tokens: start.drop_tokens,
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
            let dropped = self.drop_tokens.min(self.buf.len());
            self.buf.drain(..dropped);
            self.drop_tokens -= dropped;
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

/// A packer's contexts grouped into forward passes of a fixed number of contexts; contexts in
/// one pass must have one length, so the corpus's short last context runs alone. Batch `j` is
/// always contexts `j*B .. (j+1)*B` of a packer that starts at a multiple of `B`.
pub struct Batches<'a> {
    packer: Packer<'a>,
    pending: Option<Context>,
    size: usize,
}

impl<'a> Batches<'a> {
    /// Batches of `size` contexts from `packer`, `pending` (a context already taken from it)
    /// first.
    pub fn new(packer: Packer<'a>, pending: Option<Context>, size: usize) -> Self {
        Batches {
            packer,
            pending,
            size,
        }
    }

    /// The next batch, or `None` when the corpus is used up.
    pub fn next_batch(&mut self) -> Result<Option<Vec<Context>>> {
        let mut batch: Vec<Context> = Vec::with_capacity(self.size);
        while batch.len() < self.size {
            let next = match self.pending.take() {
                Some(c) => Some(c),
                None => self.packer.next_context()?,
            };
            let Some(c) = next else { break };
            if batch.first().is_some_and(|f| f.ids.len() != c.ids.len()) {
                self.pending = Some(c);
                break;
            }
            batch.push(c);
        }
        Ok((!batch.is_empty()).then_some(batch))
    }

    /// The packer, for what it has read so far.
    pub fn packer(&self) -> &Packer<'a> {
        &self.packer
    }
}

/// Runs `model` over one batch of contexts (all of one length) and returns each hook's values,
/// [tokens, width] in f32 on the CPU, tokens in the batch's order.
pub fn forward_batch(model: &Model, hooks: &[HookPoint], batch: &[Context]) -> Result<Vec<Tensor>> {
    let t = batch[0].ids.len() as i64;
    let ids: Vec<i64> = batch.iter().flat_map(|c| c.ids.iter().copied()).collect();
    let input = Tensor::from_slice(&ids).view([batch.len() as i64, t]);
    let mut captured = hooks.iter().fold(Hooks::new(), |h, &p| h.capture(p));
    model.forward(&input, &mut captured, false)?;
    let rows = batch.len() as i64 * t;
    Ok(hooks
        .iter()
        .map(|&p| {
            let x = captured.take(p).expect("captured");
            x.to_kind(Kind::Float)
                .to_device(tch::Device::Cpu)
                .contiguous()
                .view([rows, -1])
        })
        .collect())
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
    /// Harvests `corpus` into the run at `out` (resuming it if `resume`). With `cfg.part`, it
    /// harvests that part of the run into `out/parts/` and, when it is the last part to finish,
    /// merges the parts into the run. `progress` is called with the tokens this run (or part)
    /// holds after each batch.
    pub fn run(
        &self,
        corpus: &CorpusSource,
        cfg: &HarvestConfig,
        out: &Path,
        resume: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<HarvestReport> {
        validate(self.model, cfg)?;
        let spec = run_spec(
            self.model,
            self.tokenizer,
            self.model_info.clone(),
            corpus,
            cfg,
        );
        match cfg.part {
            None => self.run_whole(corpus, cfg, spec, out, resume, progress),
            Some(part) => self.run_part(corpus, cfg, spec, part, out, resume, progress),
        }
    }

    fn run_whole(
        &self,
        corpus: &CorpusSource,
        cfg: &HarvestConfig,
        spec: RunSpec,
        out: &Path,
        resume: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<HarvestReport> {
        let mut packer = Packer::new(corpus, self.tokenizer, cfg.ctx_len)?;
        // Read the first context before touching the output, so an empty corpus leaves no run behind.
        let Some(first) = packer.next_context()? else {
            return Err(HarvestError::EmptyCorpus(corpus.name()));
        };
        let writer = if resume {
            resume_same(out, &spec)?
        } else {
            RunWriter::create(out, spec, &cfg.writer)?
        };
        let end = cfg.max_tokens.unwrap_or(u64::MAX);
        self.fill(writer, packer, Some(first), cfg, end, progress)
    }

    #[allow(clippy::too_many_arguments)] // run's arguments, and the part
    fn run_part(
        &self,
        corpus: &CorpusSource,
        cfg: &HarvestConfig,
        spec: RunSpec,
        part: Part,
        out: &Path,
        resume: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<HarvestReport> {
        parts::check_count(out, part.count)?;
        // Refuse settings that differ from a sibling part's now, not at the merge after hours.
        if let Ok(siblings) = parts::status(out)
            && let Some((i, m)) = siblings
                .parts
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 != part.index)
                .find_map(|(i, m)| Some((i, m.as_ref()?)))
            && let Some((field, was, now)) = first_difference(&m.spec(), &spec)
        {
            return Err(HarvestError::Config(format!(
                "{}: part {i} of this run was harvested with {field} = {was}, and this part asks for {now}; all parts of a run share their settings",
                out.display()
            )));
        }
        let dir = parts::part_dir(out, part.index, part.count);
        let exists = Manifest::exists_in(&dir)?;
        if exists && !resume {
            return Err(StoreError::AlreadyExists { path: dir }.into());
        }
        let mut report = if exists && resume && Manifest::load(&dir)?.complete {
            // A re-submitted job: the part is done, and only the merge may be left.
            let manifest = resume_same_part(&dir, &spec, None)?;
            HarvestReport {
                tokens_this_run: 0,
                documents: 0,
                replaced_sequences: 0,
                manifest,
                merged: None,
                waiting: Vec::new(),
            }
        } else {
            tracing::info!("part {part}: counting the corpus's tokens to find this part's share");
            let lengths = CorpusLengths::count(
                corpus,
                self.tokenizer,
                cfg.ctx_len,
                cfg.max_tokens,
                &mut |_| {},
            )?;
            let plan = PartPlan::new(
                &lengths,
                part,
                cfg.ctx_len,
                cfg.batch_contexts,
                cfg.max_tokens,
            );
            if plan.run_tokens == 0 {
                return Err(HarvestError::EmptyCorpus(corpus.name()));
            }
            tracing::info!(
                "part {part}: contexts {}..{}, tokens {}..{} of the run's {}",
                plan.first_context,
                plan.end_context,
                plan.first_token,
                plan.first_token + plan.tokens,
                plan.run_tokens
            );
            let info = PartInfo {
                index: part.index,
                count: part.count,
                tokens: plan.tokens,
                run_tokens: plan.run_tokens,
            };
            let writer = if exists && resume {
                resume_same_part(&dir, &spec, Some((plan.first_token, &info)))?;
                RunWriter::resume(&dir)?
            } else {
                RunWriter::create_part(&dir, spec, &cfg.writer, plan.first_token, info)?
            };
            // Start the packer at the batch the part (or its resume) begins in.
            let start = plan.first_token + writer.tokens_written();
            let b = cfg.batch_contexts as u64;
            let batch_start = (start / cfg.ctx_len as u64) / b * b;
            let packer = Packer::starting_at(
                corpus,
                self.tokenizer,
                cfg.ctx_len,
                lengths.start_of(batch_start, cfg.ctx_len),
            )?;
            let end = plan.first_token + plan.tokens;
            self.fill(writer, packer, None, cfg, end, progress)?
        };
        let status = parts::status(out)?;
        report.waiting = status.pending();
        if report.waiting.is_empty() {
            report.merged = Some(parts::merge(out)?);
        }
        Ok(report)
    }

    /// Runs the model over the packer's contexts, from the batch that holds the writer's next
    /// token, and appends their tokens to the writer up to the run's token `end`; then
    /// finishes the run.
    fn fill(
        &self,
        writer: RunWriter,
        packer: Packer,
        pending: Option<Context>,
        cfg: &HarvestConfig,
        end: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<HarvestReport> {
        let model = self.model;
        let mut contexts = Batches::new(packer, pending, cfg.batch_contexts);
        let origin = writer.manifest().first_token;
        let start = origin + writer.tokens_written();
        let ctx = cfg.ctx_len as u64;
        let b = cfg.batch_contexts as u64;
        // Every context but the corpus's last is full, so token t lies in context t / ctx_len.
        let first_batch_context = (start / ctx) / b * b;
        let mut skip = start - first_batch_context * ctx;
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
                while accepted < end {
                    let Some(batch) = contexts.next_batch()? else {
                        break;
                    };
                    if batch[0].records[0].context_id < first_batch_context {
                        continue; // before the batch a resumed run restarts in
                    }
                    let values = forward_batch(model, &cfg.hooks, &batch)?;
                    let rows = batch.iter().map(|c| c.ids.len()).sum::<usize>();
                    // Rows this run already has; a resume can skip past a whole batch (the corpus's
                    // short last context runs as a batch of its own).
                    let from = (skip as usize).min(rows);
                    skip -= from as u64;
                    let to = rows.min(from + (end - accepted) as usize);
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
                    progress(accepted - origin);
                }
                Ok(())
            });
            drop(to_writer);
            let written = thread.join().expect("the shard writer panicked");
            computed?;
            written
        })?;
        // A part must end exactly where it was planned to; short, it is left unfinished (and
        // the merge says so) rather than marked complete.
        if writer.manifest().part.is_some() && accepted < end {
            return Err(HarvestError::Config(format!(
                "{}: the corpus ended at token {accepted}, before this part's end at token {end}; it has changed since the part was planned",
                writer.dir().display()
            )));
        }
        let manifest = writer.finish()?;
        let packer = contexts.packer();
        Ok(HarvestReport {
            tokens_this_run: origin + manifest.total_tokens - start,
            manifest,
            replaced_sequences: packer.replaced,
            documents: packer.next_doc,
            merged: None,
            waiting: Vec::new(),
        })
    }
}

/// Reopens the run in `dir` to continue it, refusing one harvested with other settings.
fn resume_same(dir: &Path, spec: &RunSpec) -> Result<RunWriter> {
    let w = RunWriter::resume(dir)?;
    same_settings(dir, &w.manifest().spec(), spec)?;
    Ok(w)
}

/// Checks that the part in `dir` was harvested with `spec`'s settings and, when `planned` is
/// given, that it is the same share of the corpus (it is not when the corpus has changed).
fn resume_same_part(
    dir: &Path,
    spec: &RunSpec,
    planned: Option<(u64, &PartInfo)>,
) -> Result<Manifest> {
    let m = Manifest::load(dir)?;
    same_settings(dir, &m.spec(), spec)?;
    if let Some((first_token, info)) = planned
        && (m.first_token != first_token || m.part.as_ref() != Some(info))
    {
        let show = |t: u64, p: Option<&PartInfo>| {
            p.map_or("none".into(), |p| {
                format!("tokens {t}..{} of {}", t + p.tokens, p.run_tokens)
            })
        };
        return Err(HarvestError::Mismatch {
            run: dir.display().to_string(),
            field: "part (the corpus has changed?)".into(),
            was: show(m.first_token, m.part.as_ref()),
            now: show(first_token, Some(info)),
        });
    }
    Ok(m)
}

fn same_settings(dir: &Path, was: &RunSpec, now: &RunSpec) -> Result<()> {
    match first_difference(was, now) {
        Some((field, was, now)) => Err(HarvestError::Mismatch {
            run: dir.display().to_string(),
            field: field.into(),
            was,
            now,
        }),
        None => Ok(()),
    }
}

/// The first setting a resumed run (or a sibling part) must share that differs: (field, its
/// value in `was`, its value in `now`).
fn first_difference(was: &RunSpec, now: &RunSpec) -> Option<(&'static str, String, String)> {
    identity(was)
        .into_iter()
        .zip(identity(now))
        .find(|((_, a), (_, b))| a != b)
        .map(|((field, a), (_, b))| (field, a, b))
}
