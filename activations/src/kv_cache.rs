//! The keys and values of tokens already seen, kept per layer, so that generating a token runs
//! the model on that token alone instead of on the whole text again.
//!
//! A batch holds several texts of different lengths, padded to a common width (on the left for
//! generation, so every row's next token lands in the same column). Each slot of the cache
//! records the position of its token in its own text and whether it is a real token or padding:
//! positions drive RoPE and learned position embeddings, and padding is never attended.
//!
//! One step: [`KvCache::begin`] registers the step's tokens (which are real), the model's
//! forward pass appends each layer's keys and values ([`KvCache::extend`]) and attends through
//! [`KvCache::allowed`].

use crate::error::ModelError;
use tch::{Device, Kind, Tensor};

/// Keys and values per layer, with the position and validity of every slot.
pub struct KvCache {
    /// Per layer: keys and values [batch, kv_heads, slots, d_head] (keys after RoPE).
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Position of each slot's token in its row's text [batch, slots].
    key_pos: Tensor,
    /// Whether each slot holds a real token [batch, slots].
    key_valid: Tensor,
    /// The position the next real token of each row takes [batch].
    next_pos: Tensor,
    /// The current step's token positions [batch, t] and which keys each of its queries may
    /// attend [batch, 1, t, slots], before any sliding window.
    step: Option<(Tensor, Tensor)>,
}

impl KvCache {
    /// An empty cache for `batch` rows of a model of `n_layers` layers.
    pub fn new(n_layers: usize, batch: usize, device: Device) -> KvCache {
        let b = batch as i64;
        KvCache {
            layers: (0..n_layers).map(|_| None).collect(),
            key_pos: Tensor::zeros([b, 0], (Kind::Int64, device)),
            key_valid: Tensor::zeros([b, 0], (Kind::Bool, device)),
            next_pos: Tensor::zeros([b], (Kind::Int64, device)),
            step: None,
        }
    }

    /// A cache holding what this one holds, which steps can extend while this one stays as it
    /// is (a step appends new tensors; it never writes into the held ones): one prefix, many
    /// continuations tried against it.
    pub fn fork(&self) -> KvCache {
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|l| {
                    l.as_ref()
                        .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()))
                })
                .collect(),
            key_pos: self.key_pos.shallow_clone(),
            key_valid: self.key_valid.shallow_clone(),
            next_pos: self.next_pos.shallow_clone(),
            step: None,
        }
    }

    /// Rows in the batch.
    pub fn batch(&self) -> i64 {
        self.next_pos.size()[0]
    }

    /// Slots held, padding included.
    pub fn len(&self) -> i64 {
        self.key_pos.size()[1]
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Real tokens each row holds [batch].
    pub fn lengths(&self) -> Tensor {
        self.next_pos.shallow_clone()
    }

    /// Starts a step of `valid` [batch, t] new slots (false where a slot is padding). Real
    /// tokens continue their row's positions; a query attends the real keys up to its own slot
    /// and itself (so that a padding query, whose output nothing reads, is never all-masked).
    /// Fails when a position would pass `ctx_len`.
    pub fn begin(&mut self, valid: &Tensor, ctx_len: usize) -> Result<(), ModelError> {
        let device = self.key_pos.device();
        let valid = valid.to_device(device).to_kind(Kind::Bool);
        let (b, t) = valid.size2()?;
        if b != self.batch() {
            return Err(ModelError::Config(format!(
                "a step of {b} rows for a cache of {}",
                self.batch()
            )));
        }
        let counts = valid.to_kind(Kind::Int64);
        let pos = (self.next_pos.unsqueeze(1) + counts.cumsum(1, Kind::Int64) - 1).clamp_min(0);
        let next_pos = &self.next_pos + counts.sum_dim_intlist(1, false, Kind::Int64);
        let longest = next_pos.max().int64_value(&[]) as usize;
        if longest > ctx_len {
            // Nothing of the step is kept: the cache stays as it was.
            return Err(ModelError::TooLong {
                len: longest,
                max: ctx_len,
            });
        }
        self.next_pos = next_pos;
        let past = self.len();
        self.key_pos = Tensor::cat(&[&self.key_pos, &pos], 1);
        self.key_valid = Tensor::cat(&[&self.key_valid, &valid], 1);
        let opts = (Kind::Int64, device);
        let q_slot = (Tensor::arange(t, opts) + past).unsqueeze(1);
        let k_slot = Tensor::arange(past + t, opts).unsqueeze(0);
        let causal = k_slot.le_tensor(&q_slot).unsqueeze(0);
        let itself = k_slot.eq_tensor(&q_slot).unsqueeze(0);
        let allowed = causal
            .logical_and(&self.key_valid.unsqueeze(1).logical_or(&itself))
            .unsqueeze(1);
        self.step = Some((pos, allowed));
        Ok(())
    }

    /// One past the largest position of the current step: the rows a RoPE table needs.
    pub fn table_len(&self) -> i64 {
        self.next_pos.max().int64_value(&[]).max(1)
    }

    /// The current step's token positions [batch, t].
    pub fn positions(&self) -> &Tensor {
        &self.step.as_ref().expect("KvCache::begin before a step").0
    }

    /// Which keys each query of the current step may attend [batch, 1, t, slots], narrowed to
    /// the last `window` positions where the layer has a sliding window.
    pub fn allowed(&self, window: Option<usize>) -> Tensor {
        let (pos, allowed) = self.step.as_ref().expect("KvCache::begin before a step");
        match window {
            None => allowed.shallow_clone(),
            Some(w) => {
                let back = pos.unsqueeze(2) - self.key_pos.unsqueeze(1);
                allowed.logical_and(&back.lt(w as i64).unsqueeze(1))
            }
        }
    }

    /// Appends a layer's keys and values for the current step, [batch, kv_heads, t, d_head],
    /// and returns all of that layer's, [batch, kv_heads, slots, d_head].
    pub fn extend(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let kv = match self.layers[layer].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
        };
        self.layers[layer] = Some((kv.0.shallow_clone(), kv.1.shallow_clone()));
        kv
    }

    /// Keeps only the rows in `rows` (int64 [n]): rows that finished leave the batch.
    pub fn select_rows(&mut self, rows: &Tensor) {
        let rows = rows.to_device(self.key_pos.device());
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(0, &rows);
            *v = v.index_select(0, &rows);
        }
        self.key_pos = self.key_pos.index_select(0, &rows);
        self.key_valid = self.key_valid.index_select(0, &rows);
        self.next_pos = self.next_pos.index_select(0, &rows);
        self.step = None;
    }
}

/// A layer's keys, values and attention mask: with a cache, the step's keys and values appended
/// to the cached ones and the step's mask; without one, as they are, for the causal square.
pub(crate) fn attend_cached(
    cache: Option<&mut KvCache>,
    layer: usize,
    k: Tensor,
    v: Tensor,
    window: Option<usize>,
) -> (Tensor, Tensor, Option<Tensor>) {
    match cache {
        Some(c) => {
            let (k, v) = c.extend(layer, k, v);
            (k, v, Some(c.allowed(window)))
        }
        None => (k, v, None),
    }
}
