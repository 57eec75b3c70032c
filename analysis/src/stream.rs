//! Training straight from the model, with no activations on disk (sparsify's way at scale):
//! one forward pass over each batch of the corpus's contexts feeds every dictionary asked for,
//! several hooks or several sizes at one hook, each trained on a thread of its own.
//!
//! The contexts, batches and values are the harvester's, and each dictionary reads its hook's
//! rows in token order (BOS positions dropped when its settings say so), so a dictionary trained
//! here equals one trained on a harvested run of the same tokens read in order (a shuffle
//! buffer of 0), to the learner's determinism. The held-out rows are the contexts that follow
//! the last batch any dictionary trains on.

use crate::error::{AnalysisError, Result};
use saescope_activations::corpus::CorpusSource;
use saescope_activations::harvest::{Batches, Packer, forward_batch};
use saescope_activations::hooks::HookPoint;
use saescope_activations::model::TextModel;
use saescope_activations::parts::CorpusLengths;
use saescope_sae::data::{MemorySource, Source, StreamSource};
use saescope_sae::train::{Provenance, TrainReport, train};
use saescope_sae::{Method, TrainConfig};
use saescope_store::DictDir;
use saescope_store::mirror::Mirror;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, OnceLock};
use tch::Device;

/// The held-out rows, which arrive once every dictionary has its training rows: read at the
/// end of training, when the metrics are measured.
struct HeldOut {
    dim: usize,
    rx: Mutex<Receiver<Vec<f32>>>,
    rows: OnceLock<MemorySource>,
}

impl Source for HeldOut {
    fn dim(&self) -> usize {
        self.dim
    }

    fn epoch(
        &self,
        epoch: u64,
    ) -> saescope_sae::Result<Box<dyn Iterator<Item = saescope_sae::Result<Vec<f32>>> + '_>> {
        let rows = self.rows.get_or_init(|| MemorySource {
            data: self
                .rx
                .lock()
                .expect("held-out lock")
                .recv()
                .unwrap_or_default(),
            dim: self.dim,
            seed: 0,
        });
        rows.epoch(epoch)
    }
}

/// One dictionary to train from the stream.
#[derive(Clone, Debug)]
pub struct StreamJob {
    /// The hook it reads.
    pub hook: HookPoint,
    /// Its settings; `tokens` must be set (a stream has no length to count).
    pub config: TrainConfig,
    /// Its directory.
    pub out: PathBuf,
}

/// The forward pass every job reads from.
pub struct StreamTraining<'a> {
    /// The model and its tokenizer.
    pub model: &'a TextModel,
    /// The text.
    pub corpus: &'a CorpusSource,
    /// Tokens per context, BOS included.
    pub ctx_len: usize,
    /// Contexts per forward pass.
    pub batch_contexts: usize,
    /// Rows of each hook held out after the training contexts, for the final metrics.
    pub heldout_tokens: u64,
    /// Where the dictionaries train.
    pub device: Device,
}

/// What one job's thread sends and receives.
struct Consumer {
    /// Index of its hook among the captured hooks.
    hook: usize,
    /// Rows it still needs for training; its sender is dropped when none are left.
    need: u64,
    train: Option<SyncSender<Vec<f32>>>,
    /// Held-out rows it still needs.
    held_need: u64,
    held: Vec<f32>,
    exclude_bos: bool,
}

impl StreamTraining<'_> {
    /// Trains every job from one stream of forward passes; `progress` gets the tokens run
    /// through the model so far. Returns each job's report, in order.
    pub fn train(
        &self,
        jobs: &[StreamJob],
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<TrainReport>> {
        if jobs.is_empty() {
            return Err(AnalysisError::Config("no dictionary to train".into()));
        }
        if let Some((i, job)) = jobs
            .iter()
            .enumerate()
            .find(|(i, job)| jobs[..*i].iter().any(|other| other.out == job.out))
        {
            return Err(AnalysisError::Config(format!(
                "dictionaries {i} and an earlier one would both be written to {}",
                job.out.display()
            )));
        }
        // A dictionary on object storage is trained in a local copy and uploaded at the end.
        let mirrors = jobs
            .iter()
            .map(|job| Mirror::open(&job.out))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // A stream cannot be resumed from a checkpoint (its rows are gone), so none is written.
        let jobs: Vec<StreamJob> = jobs
            .iter()
            .zip(&mirrors)
            .map(|(job, mirror)| {
                let mut job = job.clone();
                job.config.checkpoint_every = 0;
                job.out = mirror.local().to_owned();
                job
            })
            .collect();
        let jobs = &jobs[..];
        let mut hooks: Vec<HookPoint> = Vec::new();
        let mut consumers = Vec::new();
        let mut sources = Vec::new();
        for job in jobs {
            let cfg = &job.config;
            if cfg.tokens == 0 {
                return Err(AnalysisError::Config(
                    "training from the model needs a token count (--tokens): a stream has no end to count to"
                        .into(),
                ));
            }
            if cfg.method == Method::Snmf {
                return Err(AnalysisError::Config(
                    "snmf fits all its rows at once; harvest them first and train on the run"
                        .into(),
                ));
            }
            let dim: usize = self.model.model.hook_shape(job.hook.kind).iter().product();
            cfg.validate(dim)?;
            let hook = match hooks.iter().position(|h| *h == job.hook) {
                Some(i) => i,
                None => {
                    hooks.push(job.hook);
                    hooks.len() - 1
                }
            };
            // The trainer reads its steps' rows, and first a sample of `init_tokens` rows from
            // the start of the same data.
            let steps = cfg.tokens.div_ceil(cfg.batch_tokens as u64).max(1);
            let need = (steps * cfg.batch_tokens as u64).max(cfg.init_tokens as u64);
            let (tx, rx) = sync_channel(4);
            consumers.push(Consumer {
                hook,
                need,
                train: Some(tx),
                held_need: self.heldout_tokens,
                held: Vec::new(),
                exclude_bos: cfg.exclude_bos,
            });
            sources.push((dim, rx));
        }
        self.check_corpus(&consumers)?;
        let reports = self.run(jobs, hooks, consumers, sources, progress)?;
        for mirror in &mirrors {
            let weights = DictDir::new(mirror.local()).weights();
            mirror.push(weights.file_name().and_then(|n| n.to_str()))?;
        }
        Ok(reports)
    }

    /// Refuses, before any forward pass, a corpus too short for the rows the dictionaries and
    /// the held-out set need: counting tokens is a small part of a forward pass's cost, and
    /// finding out at the end would throw the training away.
    fn check_corpus(&self, consumers: &[Consumer]) -> Result<()> {
        let l = self.ctx_len as u64;
        let contexts = |rows: u64, exclude_bos: bool| rows.div_ceil(l - exclude_bos as u64);
        let b = self.batch_contexts as u64;
        let training = consumers
            .iter()
            .map(|c| contexts(c.need, c.exclude_bos).div_ceil(b) * b)
            .max()
            .unwrap_or(0);
        let held = consumers
            .iter()
            .map(|c| contexts(c.held_need, c.exclude_bos))
            .max()
            .unwrap_or(0);
        let needed = (training + held) * l;
        let lengths = CorpusLengths::count(
            self.corpus,
            &self.model.tokenizer,
            self.ctx_len,
            Some(needed),
            &mut |_| {},
        )?;
        let available = lengths.stream().div_ceil(l - 1) * l;
        if available < needed {
            return Err(AnalysisError::Data(format!(
                "the corpus holds about {available} tokens in contexts of {l}, and training with its held-out rows needs {needed}; ask for fewer --tokens (or --heldout-tokens)"
            )));
        }
        Ok(())
    }

    /// Starts a trainer thread per job and feeds them from the forward passes.
    fn run(
        &self,
        jobs: &[StreamJob],
        hooks: Vec<HookPoint>,
        mut consumers: Vec<Consumer>,
        sources: Vec<(usize, Receiver<Vec<f32>>)>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<TrainReport>> {
        // Each trainer waits for its held-out rows once trained; they come through this channel.
        let mut held_tx = Vec::new();
        let mut held_rx = Vec::new();
        for _ in jobs {
            let (tx, rx) = sync_channel::<Vec<f32>>(1);
            held_tx.push(tx);
            held_rx.push(rx);
        }
        let from = |job: &StreamJob| Provenance {
            model: Some(self.model.info.name.clone()),
            hook: Some(job.hook.to_string()),
            context_size: Some(self.ctx_len as u64),
            run: None,
            n_heads: job
                .hook
                .to_string()
                .ends_with("attn.hook_z")
                .then(|| self.model.model.hook_shape(job.hook.kind)[0] as u64),
        };
        std::thread::scope(|scope| {
            let threads: Vec<_> = jobs
                .iter()
                .zip(sources)
                .zip(held_rx)
                .map(|((job, (dim, rx)), held)| {
                    let from = from(job);
                    let device = self.device;
                    let with_heldout = self.heldout_tokens > 0;
                    scope.spawn(move || -> Result<TrainReport> {
                        let stream = StreamSource::new(dim, rx);
                        let heldout = HeldOut {
                            dim,
                            rx: Mutex::new(held),
                            rows: OnceLock::new(),
                        };
                        let heldout = with_heldout.then_some(&heldout);
                        Ok(train(
                            &stream,
                            heldout.map(|h| h as &dyn Source),
                            &job.config,
                            &job.out,
                            false,
                            device,
                            &from,
                            &mut (),
                        )?)
                    })
                })
                .collect();
            let fed = self.feed(&hooks, &mut consumers, held_tx, progress);
            // Whatever stopped the feeder, no trainer may wait for rows that will not come.
            for c in consumers.iter_mut() {
                c.train = None;
            }
            let reports: Vec<Result<TrainReport>> = threads
                .into_iter()
                .map(|t| t.join().expect("a trainer thread panicked"))
                .collect();
            // The feeder's error (the model, the corpus running out) explains a trainer's
            // stream ending early, so it comes first.
            fed?;
            reports.into_iter().collect()
        })
    }

    /// Runs the model over the corpus's contexts from the first, sending each consumer its
    /// hook's rows until it has what it needs for training, then collecting held-out rows
    /// from the contexts after the last batch any consumer trained on.
    fn feed(
        &self,
        hooks: &[HookPoint],
        consumers: &mut [Consumer],
        held_tx: Vec<SyncSender<Vec<f32>>>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let tok = &self.model.tokenizer;
        let packer = Packer::new(self.corpus, tok, self.ctx_len)?;
        let mut batches = Batches::new(packer, None, self.batch_contexts);
        let mut tokens = 0u64;
        let training = |c: &[Consumer]| c.iter().any(|c| c.train.is_some());
        let holding = |c: &[Consumer]| c.iter().any(|c| c.held_need > 0);
        let _guard = tch::no_grad_guard();
        while training(consumers) || holding(consumers) {
            let Some(batch) = batches.next_batch()? else {
                break;
            };
            let in_training = training(consumers);
            let values = forward_batch(&self.model.model, hooks, &batch)?;
            let values: Vec<Vec<f32>> = values
                .iter()
                .map(|x| Vec::<f32>::try_from(x.view([-1])))
                .collect::<std::result::Result<_, _>>()?;
            let bos: Vec<bool> = batch
                .iter()
                .flat_map(|c| c.records.iter().map(|r| r.context_pos == 0))
                .collect();
            tokens += bos.len() as u64;
            for c in consumers.iter_mut() {
                let x = &values[c.hook];
                let dim = x.len() / bos.len();
                let rows = x
                    .chunks_exact(dim)
                    .zip(&bos)
                    .filter(|(_, bos)| !(c.exclude_bos && **bos))
                    .map(|(row, _)| row);
                if in_training {
                    let Some(tx) = &c.train else { continue };
                    let mut chunk = Vec::new();
                    for row in rows.take(c.need as usize) {
                        chunk.extend_from_slice(row);
                        c.need -= 1;
                    }
                    // A trainer that stopped (an error, reported when its thread is joined)
                    // has dropped its receiver: it needs nothing more.
                    if tx.send(chunk).is_err() {
                        c.need = 0;
                        c.held_need = 0;
                    }
                    if c.need == 0 {
                        c.train = None;
                    }
                } else {
                    for row in rows.take(c.held_need as usize) {
                        c.held.extend_from_slice(row);
                        c.held_need -= 1;
                    }
                }
            }
            progress(tokens);
        }
        // Trainers still short of rows see their stream end; the error below says why.
        for c in consumers.iter_mut() {
            c.train = None;
        }
        let short = consumers.iter().map(|c| c.need).max().unwrap_or(0);
        let no_heldout = consumers.iter().any(|c| c.held.is_empty());
        for (c, tx) in consumers.iter_mut().zip(held_tx) {
            let _ = tx.send(std::mem::take(&mut c.held));
        }
        if short > 0 {
            return Err(AnalysisError::Data(format!(
                "the corpus ran out after {tokens} tokens, {short} rows short of what training needs; ask for fewer --tokens"
            )));
        }
        if no_heldout && self.heldout_tokens > 0 {
            return Err(AnalysisError::Data(format!(
                "the corpus ran out after {tokens} tokens, with no text left to hold out for the metrics; ask for fewer --tokens"
            )));
        }
        Ok(())
    }
}
