//! Training data as fixed-size batches: from a harvest run (shuffled with a seed per epoch,
//! BOS positions dropped) or from memory. A position is (epoch, batch within the epoch), so a
//! resumed run continues with exactly the batches an uninterrupted one would have seen.

use crate::error::{Result, SaeError};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use saescope_store::{BosHandling, ReadOptions, Run, Shuffle};

/// A source of rows, in an order fixed by the epoch number.
pub trait Source {
    fn dim(&self) -> usize;
    /// Chunks of rows (row-major f32) for one pass over the data.
    fn epoch(&self, epoch: u64) -> Result<Box<dyn Iterator<Item = Result<Vec<f32>>> + '_>>;
}

/// One hook of a harvest run.
pub struct RunSource {
    pub run: Run,
    pub hook: String,
    pub shards: Vec<usize>,
    pub dim: usize,
    /// Drop each context's first position (the BOS token): its activation is an outlier.
    pub exclude_bos: bool,
    pub seed: u64,
    pub shuffle_buffer: usize,
    pub verify_checksums: bool,
}

impl RunSource {
    pub fn new(run: Run, hook: &str, shards: Vec<usize>) -> Result<Self> {
        let (_, info) = run.hook(hook)?;
        let dim = info.shape.iter().product();
        Ok(RunSource {
            hook: hook.to_owned(),
            shards,
            dim,
            exclude_bos: true,
            seed: 0,
            shuffle_buffer: 1 << 18,
            verify_checksums: true,
            run,
        })
    }
}

impl Source for RunSource {
    fn dim(&self) -> usize {
        self.dim
    }

    fn epoch(&self, epoch: u64) -> Result<Box<dyn Iterator<Item = Result<Vec<f32>>> + '_>> {
        let opts = ReadOptions {
            batch_tokens: 8192,
            shards: Some(self.shards.clone()),
            shuffle: (self.shuffle_buffer > 0).then_some(Shuffle {
                seed: self
                    .seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(epoch),
                buffer_tokens: self.shuffle_buffer,
            }),
            prefetch_batches: 4,
            verify_checksums: self.verify_checksums && epoch == 0,
        };
        let reader = self.run.batches(&self.hook, &opts)?;
        let ctx = self.run.manifest().context.ctx_len as u64;
        let drop_bos =
            self.exclude_bos && self.run.manifest().context.bos == BosHandling::PrependEachContext;
        let dim = self.dim;
        Ok(Box::new(reader.map(move |b| {
            let b = b?;
            if !drop_bos {
                return Ok(b.data);
            }
            // Every context starts at a multiple of ctx_len, so its BOS row is token_index % ctx_len == 0.
            let mut out = Vec::with_capacity(b.data.len());
            for (i, t) in b.token_index.iter().enumerate() {
                if t % ctx == 0 {
                    continue;
                }
                out.extend_from_slice(&b.data[i * dim..(i + 1) * dim]);
            }
            Ok(out)
        })))
    }
}

/// Rows held in memory (tests, synthetic data), permuted by a seeded shuffle per epoch.
pub struct MemorySource {
    pub data: Vec<f32>,
    pub dim: usize,
    pub seed: u64,
}

impl Source for MemorySource {
    fn dim(&self) -> usize {
        self.dim
    }

    fn epoch(&self, epoch: u64) -> Result<Box<dyn Iterator<Item = Result<Vec<f32>>> + '_>> {
        let rows = self.data.len() / self.dim;
        let mut order: Vec<usize> = (0..rows).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            self.seed ^ epoch.wrapping_mul(0x2545_F491_4F6C_DD1D),
        );
        order.shuffle(&mut rng);
        let dim = self.dim;
        Ok(Box::new(
            order
                .chunks(4096)
                .map(|c| c.to_vec())
                .collect::<Vec<_>>()
                .into_iter()
                .map(move |c| {
                    let mut out = Vec::with_capacity(c.len() * dim);
                    for r in c {
                        out.extend_from_slice(&self.data[r * dim..(r + 1) * dim]);
                    }
                    Ok(out)
                }),
        ))
    }
}

/// Exactly `batch` rows at a time, epoch after epoch; an epoch's last partial batch is dropped.
pub struct Batcher<'a> {
    source: &'a dyn Source,
    batch: usize,
    pub epoch: u64,
    pub in_epoch: u64,
    iter: Option<Box<dyn Iterator<Item = Result<Vec<f32>>> + 'a>>,
    pending: Vec<f32>,
}

impl<'a> Batcher<'a> {
    /// Starts at (epoch, batch within epoch), skipping the batches before it.
    pub fn new(source: &'a dyn Source, batch: usize, epoch: u64, in_epoch: u64) -> Result<Self> {
        let mut b = Batcher {
            source,
            batch,
            epoch,
            in_epoch: 0,
            iter: None,
            pending: Vec::new(),
        };
        for _ in 0..in_epoch {
            b.next_batch()?;
        }
        Ok(b)
    }

    /// The next batch as row-major f32 [batch, dim].
    pub fn next_batch(&mut self) -> Result<Vec<f32>> {
        let need = self.batch * self.source.dim();
        let mut empty_epochs = 0;
        loop {
            if self.pending.len() >= need {
                let rest = self.pending.split_off(need);
                let out = std::mem::replace(&mut self.pending, rest);
                self.in_epoch += 1;
                return Ok(out);
            }
            if self.iter.is_none() {
                self.iter = Some(self.source.epoch(self.epoch)?);
            }
            match self.iter.as_mut().expect("set").next() {
                Some(chunk) => self.pending.extend_from_slice(&chunk?),
                None => {
                    if self.in_epoch == 0 {
                        empty_epochs += 1;
                        if empty_epochs > 1 {
                            return Err(SaeError::Data(format!(
                                "the training data holds fewer than one batch ({} rows)",
                                self.batch
                            )));
                        }
                    }
                    self.iter = None;
                    self.pending.clear();
                    self.epoch += 1;
                    self.in_epoch = 0;
                }
            }
        }
    }
}
