//! Training data as fixed-size batches: from a harvest run (shuffled with a seed per epoch,
//! BOS positions dropped), from memory, or streamed from the model as it runs. A position is (epoch, batch within the epoch), so a
//! resumed run continues with exactly the batches an uninterrupted one would have seen.

use crate::error::{Result, SaeError};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use saescope_store::{BosHandling, ReadOptions, Run, Shuffle, TokenSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use tch::{Device, Kind, Tensor};

/// A source of rows, in an order fixed by the epoch number.
pub trait Source {
    /// Values per row.
    fn dim(&self) -> usize;
    /// Chunks of rows (row-major f32) for one pass over the data.
    fn epoch(&self, epoch: u64) -> Result<Box<dyn Iterator<Item = Result<Vec<f32>>> + '_>>;
}

/// Row-major f32 rows as a tensor [rows, dim] on `device`.
pub fn rows_to_tensor(rows: &[f32], dim: usize, device: Device) -> Tensor {
    Tensor::from_slice(rows)
        .view([-1, dim as i64])
        .to_device(device)
}

/// A training batch as [`rows_to_tensor`] makes it, but on a CUDA device copied from
/// page-locked memory without waiting: the copy is queued behind the GPU's work, and the host
/// goes on to read the next batch (from pageable memory the copy would wait for the queue to
/// drain). libtorch keeps the page-locked block until the copy has been made, and keeps it
/// for reuse after, so this is for batches of one size, not for one large transfer.
pub fn batch_to_device(rows: &[f32], dim: usize, device: Device) -> Tensor {
    match device {
        // `_pin_memory`: the public `pin_memory` warns when given a device, and tch always
        // passes one.
        Device::Cuda(_) => rows_to_tensor(rows, dim, Device::Cpu)
            .internal_pin_memory(device)
            .to_device_(device, Kind::Float, true, false),
        _ => rows_to_tensor(rows, dim, device),
    }
}

/// One hook of a harvest run, restricted to a set of its tokens (a side of a held-out split).
pub struct RunSource {
    /// The run.
    pub run: Run,
    /// The hook read.
    pub hook: String,
    /// Which tokens: whole shards, of which only a range of token indices counts.
    pub tokens: TokenSet,
    /// Values per row (the product of the hook's shape).
    pub dim: usize,
    /// Drop each context's first position (the BOS token): its activation is an outlier.
    pub exclude_bos: bool,
    /// Seeds each epoch's shuffle.
    pub seed: u64,
    /// Rows in the reader's shuffle buffer (0: in order).
    pub shuffle_buffer: usize,
    /// Check each shard's SHA-256 on the first epoch.
    pub verify_checksums: bool,
}

impl RunSource {
    /// The tokens `tokens` of `hook` in `run`, BOS dropped, shuffled with seed 0.
    pub fn new(run: Run, hook: &str, tokens: TokenSet) -> Result<Self> {
        let (_, info) = run.hook(hook)?;
        let dim = info.shape.iter().product();
        Ok(RunSource {
            hook: hook.to_owned(),
            tokens,
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
            shards: Some(self.tokens.shards.clone()),
            shuffle: (self.shuffle_buffer > 0).then_some(Shuffle {
                seed: self
                    .seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(epoch),
                buffer_tokens: self.shuffle_buffer,
            }),
            prefetch_batches: 4,
            verify_checksums: self.verify_checksums && epoch == 0,
            ..ReadOptions::default()
        };
        let reader = self.run.batches(&self.hook, &opts)?;
        let ctx = self.run.manifest().context.ctx_len as u64;
        let drop_bos =
            self.exclude_bos && self.run.manifest().context.bos == BosHandling::PrependEachContext;
        let dim = self.dim;
        let range = self.tokens.tokens.clone();
        Ok(Box::new(reader.map(move |b| {
            let b = b?;
            let whole = b.token_index.iter().all(|t| range.contains(t));
            if !drop_bos && whole {
                return Ok(b.data);
            }
            // Every context starts at a multiple of ctx_len, so its BOS row is token_index % ctx_len == 0.
            let mut out = Vec::with_capacity(b.data.len());
            for (i, t) in b.token_index.iter().enumerate() {
                if (drop_bos && t % ctx == 0) || !range.contains(t) {
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
    /// Row-major rows.
    pub data: Vec<f32>,
    /// Values per row.
    pub dim: usize,
    /// Seeds each epoch's permutation.
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

/// Rows that arrive over a channel while another thread computes them: training straight
/// from the model, with no disk in between. There is one pass. The trainer reads the start of
/// the data twice (its initial sample, then the first batches), so the chunks handed out by the
/// first read are kept and replayed by the second, and only then are chunks taken from the
/// channel without being kept.
pub struct StreamSource {
    dim: usize,
    rx: Mutex<Receiver<Vec<f32>>>,
    /// Chunks the first read took, for the second to replay.
    kept: Mutex<Vec<Vec<f32>>>,
    reads: AtomicU64,
}

impl StreamSource {
    /// A source of rows of `dim` values, each chunk sent on the channel `rx` belongs to.
    pub fn new(dim: usize, rx: Receiver<Vec<f32>>) -> Self {
        StreamSource {
            dim,
            rx: Mutex::new(rx),
            kept: Mutex::new(Vec::new()),
            reads: AtomicU64::new(0),
        }
    }

    fn receive(&self) -> Option<Vec<f32>> {
        self.rx.lock().expect("stream lock").recv().ok()
    }
}

impl Source for StreamSource {
    fn dim(&self) -> usize {
        self.dim
    }

    fn epoch(&self, epoch: u64) -> Result<Box<dyn Iterator<Item = Result<Vec<f32>>> + '_>> {
        let read = self.reads.fetch_add(1, Ordering::SeqCst);
        if epoch > 0 || read > 1 {
            return Err(SaeError::Data(
                "rows streamed from the model are read in one pass: train on at most the tokens the stream holds (--tokens)".into(),
            ));
        }
        if read == 0 {
            return Ok(Box::new(std::iter::from_fn(move || {
                let chunk = self.receive()?;
                self.kept.lock().expect("stream lock").push(chunk.clone());
                Some(Ok(chunk))
            })));
        }
        let kept = std::mem::take(&mut *self.kept.lock().expect("stream lock"));
        Ok(Box::new(
            kept.into_iter()
                .map(Ok)
                .chain(std::iter::from_fn(move || self.receive().map(Ok))),
        ))
    }
}

/// Exactly `batch` rows at a time, epoch after epoch; an epoch's last partial batch is dropped.
pub struct Batcher<'a> {
    source: &'a dyn Source,
    batch: usize,
    /// The epoch the next batch comes from.
    pub epoch: u64,
    /// Batches taken in that epoch.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_replays_what_its_first_read_took_then_goes_on_once() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        for i in 0..6 {
            tx.send(vec![i as f32; 2]).unwrap();
        }
        drop(tx);
        let s = StreamSource::new(2, rx);
        let mut sample = Batcher::new(&s, 2, 0, 0).unwrap();
        assert_eq!(sample.next_batch().unwrap(), [0.0, 0.0, 1.0, 1.0]);
        drop(sample);
        let mut train = Batcher::new(&s, 3, 0, 0).unwrap();
        assert_eq!(train.next_batch().unwrap(), [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(train.next_batch().unwrap(), [3.0, 3.0, 4.0, 4.0, 5.0, 5.0]);
        let err = train.next_batch().unwrap_err().to_string();
        assert!(err.contains("one pass"), "{err}");
    }
}
