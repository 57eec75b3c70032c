//! Feature analysis: one streaming pass over a harvest run that gathers, for every feature of a
//! dictionary, its firing statistics, activation histogram, top-activating contexts, samples
//! from equal-width activation intervals and co-occurrence with its nearest neighbours; plus
//! what needs no data: logit effects, decoder neighbours and per-head attribution.
//!
//! Memory grows with the number of features, not of tokens: every per-feature structure is
//! bounded (a top-k list, fixed-size reservoirs, fixed histograms), and only the last few rows of
//! codes are kept, to cut the context window around an activating token.
//!
//! The activation range is not known until the pass ends, so each feature's histogram and
//! interval reservoirs live on bins over [0, R), R a power of two above every value seen; when a
//! value reaches R, adjacent bins merge and R doubles. At the end the reservoirs' bins (each at
//! most max/10 wide) are gathered into the 10 intervals of [0, max] by their centres.

use crate::dictionary::Dictionary;
use crate::error::{Result, SaeError};
use rayon::prelude::*;
use saescope_store::features::{ContextKind, Contexts, FeatureRow, NeighbourRow, Window};
use saescope_store::{ReadOptions, Run};
use std::collections::VecDeque;
use tch::{Device, Kind, Tensor};

/// Settings, with the defaults SAEDashboard users know.
#[derive(Clone, Debug)]
pub struct AnalyzeConfig {
    pub top: usize,
    pub intervals: usize,
    pub per_interval: usize,
    /// Tokens shown before and after the activating one (within its context).
    pub window_before: usize,
    pub window_after: usize,
    pub hist_bins: usize,
    pub neighbours: usize,
    pub logit_k: usize,
    pub logit_bins: usize,
    /// Rows encoded at once.
    pub batch_tokens: usize,
    /// Analyse at most this many tokens of the run (None: all).
    pub max_tokens: Option<u64>,
    /// Leave each context's BOS position out (its activations are outliers).
    pub exclude_bos: bool,
    pub seed: u64,
}

impl Default for AnalyzeConfig {
    fn default() -> Self {
        AnalyzeConfig {
            top: 20,
            intervals: 10,
            per_interval: 5,
            window_before: 12,
            window_after: 4,
            hist_bins: 50,
            neighbours: 10,
            logit_k: 10,
            logit_bins: 50,
            batch_tokens: 4096,
            max_tokens: None,
            exclude_bos: true,
            seed: 0,
        }
    }
}

/// Reservoir bins per feature: twice the intervals, so each holds at most max/intervals.
fn reservoir_bins(cfg: &AnalyzeConfig) -> usize {
    2 * cfg.intervals
}

/// The longest window (before + 1 + after) a sample holds; fixed so samples need no heap.
pub const MAX_WINDOW: usize = 32;

/// One activating token with its window of the feature's activations.
#[derive(Clone, Debug)]
struct Sample {
    value: f32,
    token: u64,
    /// Token index of the window's first token.
    start: u64,
    len: u8,
    acts: [f32; MAX_WINDOW],
}

impl Sample {
    fn acts(&self) -> &[f32] {
        &self.acts[..self.len as usize]
    }
}

#[derive(Clone, Debug, Default)]
struct FeatureState {
    count: u64,
    sum: f64,
    max: f32,
    /// Histogram range [0, range); 0 until the first value. The histogram and the
    /// reservoirs' counts live in [`Pass`]'s flat tables.
    range: f32,
    reservoirs: Vec<Vec<Sample>>,
    top: Vec<Sample>,
    /// `top`'s values, apart so that finding the smallest reads a few cache lines, not every
    /// sample's window.
    top_values: Vec<f32>,
    /// The smallest value in a full `top`, and where it is.
    top_min: (usize, f32),
}

/// The sparse codes of the rows not yet folded and of the few before them that windows still
/// reach, in one flat buffer.
struct Recent {
    /// Token index of the oldest row kept.
    base: u64,
    entries: Vec<(u32, f32)>,
    /// Absolute offset (counting dropped entries) where each kept row ends.
    ends: VecDeque<usize>,
    /// Absolute offset of `entries[0]`, and where row `base` starts.
    front: usize,
    first_start: usize,
}

impl Recent {
    fn new() -> Self {
        Recent {
            base: 0,
            entries: Vec::new(),
            ends: VecDeque::new(),
            front: 0,
            first_start: 0,
        }
    }
    fn row(&self, token: u64) -> Option<&[(u32, f32)]> {
        let i = token.checked_sub(self.base)? as usize;
        let end = *self.ends.get(i)?;
        let start = if i == 0 {
            self.first_start
        } else {
            self.ends[i - 1]
        };
        Some(&self.entries[start - self.front..end - self.front])
    }
    fn end(&self) -> u64 {
        self.base + self.ends.len() as u64
    }
    fn push(&mut self, row: &[(u32, f32)]) {
        self.entries.extend_from_slice(row);
        self.ends.push_back(self.front + self.entries.len());
    }
    fn pop_front(&mut self) {
        if let Some(end) = self.ends.pop_front() {
            self.first_start = end;
            self.base += 1;
            let dead = end - self.front;
            if dead > 1 << 16 && dead * 2 > self.entries.len() {
                self.entries.drain(..dead);
                self.front = end;
            }
        }
    }
}

/// SplitMix64: a reproducible random number from a key, whatever thread asks.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Keeps `k` of two reservoirs' samples, each pool weighted by how many values it stands for
/// (Efraimidis–Spirakis keys u^(1/w)), so the result is again a uniform sample of the union.
fn merge_reservoirs(
    a: (u64, Vec<Sample>),
    b: (u64, Vec<Sample>),
    k: usize,
    key: u64,
) -> Vec<Sample> {
    let mut pool: Vec<(f64, Sample)> = Vec::new();
    for (count, samples) in [a, b] {
        if samples.is_empty() {
            continue;
        }
        let w = count as f64 / samples.len() as f64;
        for s in samples {
            let u = (mix(key ^ s.token.wrapping_mul(0x2545_F491_4F6C_DD1D)) >> 11) as f64
                / (1u64 << 53) as f64;
            pool.push((u.max(1e-300).ln() / w, s));
        }
    }
    pool.sort_by(|x, y| y.0.total_cmp(&x.0));
    pool.into_iter().take(k).map(|(_, s)| s).collect()
}

/// What the pass needs to know about each token of the run.
pub struct TokenTable {
    pub token_id: Vec<u32>,
    pub context_pos: Vec<u32>,
}

impl TokenTable {
    pub fn read(run: &Run) -> Result<TokenTable> {
        let mut t = TokenTable {
            token_id: Vec::new(),
            context_pos: Vec::new(),
        };
        for i in 0..run.manifest().shards.len() {
            for r in run.read_tokens(i)? {
                t.token_id.push(r.token_id);
                t.context_pos.push(r.context_pos);
            }
        }
        Ok(t)
    }
}

/// Everything a pass produced, ready for [`saescope_store::features::write_feature_store`].
pub struct Analysis {
    pub features: Vec<FeatureRow>,
    /// Top and interval windows, sorted by feature; token text is added when the store is
    /// written.
    pub contexts: Contexts,
    pub neighbours: Vec<NeighbourRow>,
    pub tokens: u64,
    pub log10_density_histogram: Vec<u64>,
    /// Wall time spent folding codes into the states (on idle-priority threads, overlapping
    /// the encoding, so it includes time spent waiting for a core).
    pub fold_seconds: f64,
    /// CPU time the folding threads used.
    pub fold_cpu_seconds: f64,
    /// Wall time between the last batch encoded and the last row folded.
    pub drain_seconds: f64,
    /// Wall time the encoding thread waited for the folder to take a batch: near zero when the
    /// analysis keeps up with the encoder.
    pub wait_seconds: f64,
    /// Wall time turning the states into rows.
    pub finish_seconds: f64,
}

/// Per-feature data computed from the weights alone.
pub struct WeightFacts {
    /// Top `neighbours` by decoder cosine: (neighbour, cosine) per feature.
    pub neighbours: Vec<Vec<(u32, f32)>>,
    pub logits: Vec<LogitEffect>,
    pub head_share: Vec<Vec<f32>>,
}

#[derive(Clone, Debug, Default)]
pub struct LogitEffect {
    pub top: Vec<(u32, f32)>,
    pub bottom: Vec<(u32, f32)>,
    pub hist: Vec<u32>,
    pub min: f32,
    pub max: f32,
}

/// Each feature's share of decoder norm per head, for a dictionary over concatenated heads.
pub fn head_share(atoms: &Tensor, heads: i64) -> Tensor {
    let n = atoms.size()[0];
    let per_head = atoms
        .view([n, heads, -1])
        .norm_scalaropt_dim(2.0, [2], false);
    &per_head
        / per_head
            .sum_dim_intlist(1, true, Kind::Float)
            .clamp_min(1e-12)
}

/// Decoder neighbours by cosine: the `k` most similar other atoms of each, in blocks of rows.
pub fn decoder_neighbours(atoms: &Tensor, k: usize) -> Vec<Vec<(u32, f32)>> {
    let _g = tch::no_grad_guard();
    let a = atoms.to_kind(Kind::Float);
    let a = &a / a.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12);
    let n = a.size()[0];
    let k = (k as i64).min(n - 1).max(0);
    let mut out = Vec::with_capacity(n as usize);
    let block = 1024;
    let mut start = 0;
    while start < n {
        let rows = block.min(n - start);
        let sims = a.narrow(0, start, rows).matmul(&a.tr());
        // Leave each atom out of its own list.
        let own = Tensor::arange_start(start, start + rows, (Kind::Int64, a.device()));
        let sims = sims.index_put(
            &[
                Some(Tensor::arange(rows, (Kind::Int64, a.device()))),
                Some(own),
            ],
            &Tensor::from(f32::NEG_INFINITY).to_device(a.device()),
            false,
        );
        let (v, i) = sims.topk(k, 1, true, true);
        let v = Vec::<f32>::try_from(v.reshape([-1]).to_device(Device::Cpu)).expect("f32");
        let i = Vec::<i64>::try_from(i.reshape([-1]).to_device(Device::Cpu)).expect("i64");
        for r in 0..rows as usize {
            let s = r * k as usize;
            out.push((s..s + k as usize).map(|j| (i[j] as u32, v[j])).collect());
        }
        start += rows;
    }
    out
}

/// Direct logit effect of each feature: its decoder direction written into the residual stream
/// (through `to_residual` [d_model, width] when given), times the folded unembedding
/// [vocab, d_model]. Top and bottom `k` tokens and a histogram over the vocabulary.
pub fn logit_effects(
    atoms: &Tensor,
    to_residual: Option<&Tensor>,
    unembed: &Tensor,
    k: usize,
    bins: usize,
) -> Vec<LogitEffect> {
    let _g = tch::no_grad_guard();
    let mut dirs = atoms.to_kind(Kind::Float);
    if let Some(w) = to_residual {
        dirs = dirs.matmul(&w.to_kind(Kind::Float).tr());
    }
    let u = unembed.to_kind(Kind::Float);
    let n = dirs.size()[0];
    let vocab = u.size()[0];
    let k = (k as i64).min(vocab);
    let mut out = Vec::with_capacity(n as usize);
    let block = 256;
    let mut start = 0;
    while start < n {
        let rows = block.min(n - start);
        let e = dirs.narrow(0, start, rows).matmul(&u.tr());
        let (tv, ti) = e.topk(k, 1, true, true);
        let (bv, bi) = e.topk(k, 1, false, true);
        let lo = e.amin(1, true);
        let hi = e.amax(1, true);
        let b = bins as f64;
        let idx = ((&e - &lo) / (&hi - &lo).clamp_min(1e-12) * b)
            .floor()
            .clamp(0.0, b - 1.0)
            .to_kind(Kind::Int64);
        let hist = Tensor::zeros([rows, bins as i64], (Kind::Int64, e.device())).scatter_add(
            1,
            &idx,
            &idx.ones_like(),
        );
        let cpu_f =
            |t: Tensor| Vec::<f32>::try_from(t.reshape([-1]).to_device(Device::Cpu)).expect("f32");
        let cpu_i =
            |t: Tensor| Vec::<i64>::try_from(t.reshape([-1]).to_device(Device::Cpu)).expect("i64");
        let (tv, ti, bv, bi) = (cpu_f(tv), cpu_i(ti), cpu_f(bv), cpu_i(bi));
        let (lo, hi, hist) = (cpu_f(lo), cpu_f(hi), cpu_i(hist));
        let k = k as usize;
        for r in 0..rows as usize {
            let pick = |v: &[f32], i: &[i64]| {
                (r * k..(r + 1) * k)
                    .map(|j| (i[j] as u32, v[j]))
                    .collect::<Vec<_>>()
            };
            out.push(LogitEffect {
                top: pick(&tv, &ti),
                bottom: pick(&bv, &bi),
                hist: hist[r * bins..(r + 1) * bins]
                    .iter()
                    .map(|&c| c as u32)
                    .collect(),
                min: lo[r],
                max: hi[r],
            });
        }
        start += rows;
    }
    out
}

/// One encoded batch, in CSR form on the CPU.
struct Encoded {
    first: u64,
    rows: usize,
    cols: Vec<i64>,
    vals: Vec<f32>,
    offsets: Vec<i64>,
}

/// The streaming pass's state.
struct Pass<'a> {
    cfg: &'a AnalyzeConfig,
    tokens: &'a TokenTable,
    states: Vec<FeatureState>,
    /// Every feature's activation histogram and the number of values each of its reservoirs
    /// stands for, as flat [features × bins] tables: folding walks the features in order and
    /// reads these as it goes, instead of following a pointer per feature.
    hist: Vec<u32>,
    seen: Vec<u64>,
    recent: Recent,
    /// Next row whose entries have not been folded into the states.
    next_focus: u64,
    cooccur: Cooccurrence,
    /// Buffers reused across batches.
    row_buf: Vec<(u32, f32)>,
    entries: Vec<(u32, f32)>,
    starts: Vec<usize>,
}

impl Pass<'_> {
    /// The window of feature `f` around token `t` (same context only). `fired` is `f`'s
    /// nonzero entries in token order, as (token − `origin`, value), and `i` is `t`'s entry:
    /// the window's activations are read off its neighbours in that list, a few entries in
    /// cache, instead of looked up in every row of the window.
    fn window(&self, t: u64, fired: &[(u32, f32)], i: usize, origin: u64) -> Sample {
        let pos = self.tokens.context_pos[t as usize] as u64;
        let ctx_start = t - pos;
        let lo = t
            .saturating_sub(self.cfg.window_before as u64)
            .max(ctx_start)
            .max(self.recent.base);
        let mut hi = t;
        while hi + 1 < self.recent.end()
            && hi < t + self.cfg.window_after as u64
            && self.tokens.context_pos[hi as usize + 1] as u64 == pos + (hi + 1 - t)
        {
            hi += 1;
        }
        let mut acts = [0.0; MAX_WINDOW];
        let token = |e: &(u32, f32)| origin + e.0 as u64;
        for e in fired[..i].iter().rev().take_while(|e| token(e) >= lo) {
            acts[(token(e) - lo) as usize] = e.1;
        }
        for e in fired[i..].iter().take_while(|e| token(e) <= hi) {
            acts[(token(e) - lo) as usize] = e.1;
        }
        Sample {
            value: fired[i].1,
            token: t,
            start: lo,
            len: (hi - lo + 1) as u8,
            acts,
        }
    }

    /// Appends a batch's rows (BOS rows emptied if asked), folds every row
    /// whose window is now complete, and drops rows no window can reach any more.
    fn push(&mut self, e: Encoded) {
        debug_assert_eq!(e.first, self.recent.end());
        for r in 0..e.rows {
            let t = e.first + r as u64;
            let (s, end) = (
                e.offsets[r] as usize,
                e.offsets.get(r + 1).map_or(e.cols.len(), |&o| o as usize),
            );
            let row = &mut self.row_buf;
            row.clear();
            if !(self.cfg.exclude_bos && self.tokens.context_pos[t as usize] == 0) {
                row.extend(
                    (s..end)
                        .map(|j| (e.cols[j] as u32, e.vals[j]))
                        .filter(|&(_, v)| v != 0.0),
                );
            }
            self.cooccur.add_row(row);
            self.recent.push(row);
        }
        let ready = self
            .recent
            .end()
            .saturating_sub(self.cfg.window_after as u64);
        self.fold(ready);
        let keep_back = self.cfg.window_before as u64;
        while self.recent.base + keep_back < self.next_focus && !self.recent.ends.is_empty() {
            self.recent.pop_front();
        }
    }

    /// Folds rows next_focus..until into the feature states. The entries of every kept row
    /// are first grouped by feature (a counting sort, which keeps token order within a
    /// feature), so each feature's state is loaded once per call rather than once per entry
    /// (the states do not fit in cache) and its windows are read off its own list; then
    /// features are split in ranges across threads.
    fn fold(&mut self, until: u64) {
        if until <= self.next_focus {
            return;
        }
        let from = self.next_focus;
        // Windows reach back before `from` and ahead of `until`: group every kept row.
        let (origin, end) = (self.recent.base, self.recent.end());
        let n = self.states.len();
        let mut starts = std::mem::take(&mut self.starts);
        starts.clear();
        starts.resize(n + 1, 0);
        for t in origin..end {
            for &(f, _) in self.recent.row(t).unwrap_or(&[]) {
                starts[f as usize + 1] += 1;
            }
        }
        for f in 0..n {
            starts[f + 1] += starts[f];
        }
        let mut entries = std::mem::take(&mut self.entries);
        entries.clear();
        entries.resize(starts[n], (0, 0.0));
        let mut next = starts.clone();
        for t in origin..end {
            for &(f, v) in self.recent.row(t).unwrap_or(&[]) {
                entries[next[f as usize]] = ((t - origin) as u32, v);
                next[f as usize] += 1;
            }
        }
        let threads = rayon::current_num_threads().max(1);
        let chunk = n.div_ceil(threads * 4).max(64);
        let cfg = self.cfg;
        let (hb, rb) = (cfg.hist_bins, reservoir_bins(cfg));
        let mut states = std::mem::take(&mut self.states);
        let mut hist = std::mem::take(&mut self.hist);
        let mut seen = std::mem::take(&mut self.seen);
        let this = &*self;
        let (grouped, bounds) = (&entries, &starts);
        let (first, last) = ((from - origin) as u32, (until - origin) as u32);
        states
            .par_chunks_mut(chunk)
            .zip(hist.par_chunks_mut(chunk * hb))
            .zip(seen.par_chunks_mut(chunk * rb))
            .enumerate()
            .for_each(|(ci, ((part, hist), seen))| {
                let bins = hist.chunks_mut(hb).zip(seen.chunks_mut(rb));
                for (i, (state, (hist, seen))) in part.iter_mut().zip(bins).enumerate() {
                    let f = ci * chunk + i;
                    let fired = &grouped[bounds[f]..bounds[f + 1]];
                    for (j, &(dt, v)) in fired.iter().enumerate() {
                        if (first..last).contains(&dt) && v > 0.0 {
                            let bins = Bins { hist, seen };
                            this.update(state, bins, f as u32, (fired, j), origin, cfg);
                        }
                    }
                }
            });
        self.states = states;
        self.hist = hist;
        self.seen = seen;
        self.entries = entries;
        self.starts = starts;
        self.next_focus = until;
    }

    /// Folds entry `at.1` of `f`'s list `at.0` (see [`Pass::window`]) into its state.
    fn update(
        &self,
        s: &mut FeatureState,
        b: Bins,
        f: u32,
        at: (&[(u32, f32)], usize),
        origin: u64,
        cfg: &AnalyzeConfig,
    ) {
        let (fired, i) = at;
        let (t, v) = (origin + fired[i].0 as u64, fired[i].1);
        s.count += 1;
        s.sum += v as f64;
        s.max = s.max.max(v);
        let rbins = reservoir_bins(cfg);
        // A token often enters both the top list and a reservoir: cut its window once.
        let mut cut: Option<Sample> = None;
        let mut window = || {
            cut.get_or_insert_with(|| self.window(t, fired, i, origin))
                .clone()
        };
        let Bins { hist, seen } = b;
        if s.range == 0.0 {
            s.range = 2f32.powi(v.log2().floor() as i32 + 1);
            s.reservoirs = vec![Vec::new(); rbins];
        }
        while v >= s.range {
            // Double the range: bins 2i and 2i+1 become bin i (in place: bin i is written
            // only after bins 2i and 2i + 1 have been read).
            let hb = hist.len();
            for i in 0..hb {
                hist[i] = hist.get(2 * i).copied().unwrap_or(0)
                    + hist.get(2 * i + 1).copied().unwrap_or(0);
            }
            let mut res = vec![Vec::new(); rbins];
            for i in 0..rbins / 2 {
                let key = cfg.seed ^ mix((f as u64) << 32 | (s.count << 8) | i as u64);
                res[i] = merge_reservoirs(
                    (seen[2 * i], std::mem::take(&mut s.reservoirs[2 * i])),
                    (
                        seen[2 * i + 1],
                        std::mem::take(&mut s.reservoirs[2 * i + 1]),
                    ),
                    cfg.per_interval,
                    key,
                );
            }
            for i in 0..rbins {
                seen[i] = if i < rbins / 2 {
                    seen[2 * i] + seen[2 * i + 1]
                } else {
                    0
                };
            }
            s.reservoirs = res;
            s.range *= 2.0;
        }
        let hb = ((v / s.range) * cfg.hist_bins as f32) as usize;
        hist[hb.min(cfg.hist_bins - 1)] += 1;
        let rb = (((v / s.range) * rbins as f32) as usize).min(rbins - 1);
        seen[rb] += 1;
        // A reservoir holds min(seen, per_interval) samples (merging keeps that), so `seen`
        // says whether it is full without a visit to the reservoir.
        let seen = seen[rb];
        debug_assert_eq!(
            s.reservoirs[rb].len() as u64,
            (seen - 1).min(cfg.per_interval as u64)
        );
        if seen <= cfg.per_interval as u64 {
            s.reservoirs[rb].push(window());
        } else {
            // Keep the new value with probability per_interval / seen: a uniform draw in
            // [0, seen) by multiply-shift, which needs no division.
            let u = mix(cfg.seed ^ ((f as u64) << 40) ^ t.wrapping_mul(0x9E37_79B9));
            let j = ((u as u128 * seen as u128) >> 64) as usize;
            if j < cfg.per_interval {
                s.reservoirs[rb][j] = window();
            }
        }
        if s.top.len() < cfg.top || v > s.top_min.1 {
            if s.top.len() < cfg.top {
                s.top.push(window());
                s.top_values.push(v);
            } else {
                s.top[s.top_min.0] = window();
                s.top_values[s.top_min.0] = v;
            }
            if s.top.len() == cfg.top {
                s.top_min = s
                    .top_values
                    .iter()
                    .copied()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("top is full");
            }
        }
    }
}

/// One feature's slices of [`Pass`]'s histogram and reservoir-count tables.
struct Bins<'a> {
    hist: &'a mut [u32],
    seen: &'a mut [u64],
}

/// Co-occurrence of each feature with its decoder neighbours, counted row by row with a bitset
/// of the row's active features (a few hundred bit tests a row instead of a search per pair).
/// Neighbour ids and counts are flat [features × neighbours] tables in rank order, so a row's
/// active feature costs two adjacent reads rather than a walk to its own list.
struct Cooccurrence {
    /// Neighbour ids; [`Cooccurrence::NONE`] past a short list.
    ids: Vec<u32>,
    counts: Vec<u64>,
    per: usize,
    bits: Vec<u64>,
}

impl Cooccurrence {
    const NONE: u32 = u32::MAX;

    fn new(neighbours: &[Vec<(u32, f32)>]) -> Self {
        let per = neighbours.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![Self::NONE; neighbours.len() * per];
        for (f, list) in neighbours.iter().enumerate() {
            for (i, &(g, _)) in list.iter().enumerate() {
                ids[f * per + i] = g;
            }
        }
        Cooccurrence {
            ids,
            counts: vec![0; neighbours.len() * per],
            per,
            bits: vec![0; neighbours.len().div_ceil(64)],
        }
    }

    fn add_row(&mut self, row: &[(u32, f32)]) {
        if self.per == 0 {
            return;
        }
        for &(f, _) in row {
            self.bits[f as usize / 64] |= 1 << (f % 64);
        }
        for &(f, _) in row {
            let at = f as usize * self.per..(f as usize + 1) * self.per;
            for (&g, count) in self.ids[at.clone()].iter().zip(&mut self.counts[at]) {
                if g != Self::NONE && self.bits[g as usize / 64] >> (g % 64) & 1 == 1 {
                    *count += 1;
                }
            }
        }
        for &(f, _) in row {
            self.bits[f as usize / 64] = 0;
        }
    }

    fn get(&self, f: usize, rank: usize) -> u64 {
        self.counts.get(f * self.per + rank).copied().unwrap_or(0)
    }
}

/// The threads that fold codes into feature states. On Linux they run at idle priority: when
/// the encoder keeps every core busy (a CPU encoder does), folding takes only the cycles the
/// encoder leaves (its serial stretches, its waits on the reader), instead of preempting one of
/// its threads and leaving the others waiting at the next barrier. The encoder waits for the
/// folder only once two encoded batches are queued, and then the cores are free for it.
fn fold_pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(|i| format!("saescope-fold-{i}"))
        .start_handler(|_| idle_priority())
        .build()
        .map_err(|e| SaeError::Config(format!("cannot start the folding threads: {e}")))
}

#[cfg(target_os = "linux")]
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` and changes only the calling thread's policy
    // (pid 0); a failure leaves the thread at normal priority, which is harmless.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

#[cfg(not(target_os = "linux"))]
fn idle_priority() {}

/// CPU time the calling thread has used, in seconds (0 where the clock is missing).
#[cfg(target_os = "linux")]
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if ok {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_seconds() -> f64 {
    0.0
}

/// Marks the process that [`reexec_with_passive_openmp`] starts.
pub const PASSIVE_OPENMP_MARK: &str = "SAESCOPE_PASSIVE_OPENMP";

/// Starts the current program again, in place (same pid and streams), with OpenMP's wait policy
/// set to PASSIVE, unless the user chose a policy or this process is already that restart.
/// Returns only when it did not restart: `Some` with the error if the exec failed.
///
/// Why: by default libtorch's OpenMP threads (libgomp) spin for a while after every parallel
/// region, holding their cores, so the idle-priority folding threads get a core only once the
/// encoder blocks on them. With PASSIVE they sleep at once, and folding runs in the encoder's
/// idle cycles instead. libgomp reads the variable once, when it loads, before `main`, so only
/// a fresh process image can change it. For binaries: call it first in `main`, before any
/// thread starts.
#[cfg(unix)]
pub fn reexec_with_passive_openmp() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some()
        || std::env::var_os(PASSIVE_OPENMP_MARK).is_some()
    {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(e),
    };
    Some(
        std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .env(PASSIVE_OPENMP_MARK, "1")
            .exec(),
    )
}

#[cfg(not(unix))]
pub fn reexec_with_passive_openmp() -> Option<std::io::Error> {
    None
}

/// Runs the pass over `hook` of `run`, encoding with `dict`. `weights` come from
/// [`decoder_neighbours`], [`logit_effects`] and [`head_share`]; `token_str` names a token id
/// of the logit effects (context windows hold ids; the store's writer names them).
#[allow(clippy::too_many_arguments)]
pub fn analyze(
    dict: &dyn Dictionary,
    run: &Run,
    hook: &str,
    tokens: &TokenTable,
    weights: &WeightFacts,
    token_str: &(dyn Fn(u32) -> String + Sync),
    cfg: &AnalyzeConfig,
    device: Device,
    progress: &mut dyn FnMut(u64),
) -> Result<Analysis> {
    let _g = tch::no_grad_guard();
    if cfg.window_before + cfg.window_after + 1 > MAX_WINDOW
        || cfg.top == 0
        || cfg.intervals == 0
        || cfg.hist_bins == 0
    {
        return Err(SaeError::Config(format!(
            "analysis windows hold at most {MAX_WINDOW} tokens, and top, intervals and hist_bins must be positive"
        )));
    }
    let n = dict.n_latents();
    let total = run.manifest().total_tokens;
    let limit = cfg.max_tokens.unwrap_or(total).min(total);
    if tokens.token_id.len() as u64 != total {
        return Err(SaeError::Data(format!(
            "the run's token tables hold {} tokens, its manifest {total}",
            tokens.token_id.len()
        )));
    }
    let mut pass = Pass {
        cfg,
        tokens,
        states: vec![FeatureState::default(); n],
        hist: vec![0; n * cfg.hist_bins],
        seen: vec![0; n * reservoir_bins(cfg)],
        recent: Recent::new(),
        next_focus: 0,
        row_buf: Vec::new(),
        entries: Vec::new(),
        starts: Vec::new(),
        cooccur: Cooccurrence::new(&weights.neighbours),
    };
    let reader = run.batches(
        hook,
        &ReadOptions {
            batch_tokens: cfg.batch_tokens,
            ..ReadOptions::default()
        },
    )?;
    // Encoding (libtorch's threads) and folding (rayon's) overlap: this thread reads and
    // encodes batch i + 1 while the folder thread folds batch i into the feature states.
    let (send, recv) = std::sync::mpsc::sync_channel::<Encoded>(2);
    let pool = fold_pool()?;
    let fold_threads = &pool;
    let mut analysed = 0u64;
    let mut waited = std::time::Duration::ZERO;
    let ((folded, cooccur, fold_seconds), read_result, drain_seconds) =
        std::thread::scope(|scope| {
            let folder = scope.spawn(move || {
                fold_threads.install(|| {
                    let mut busy = std::time::Duration::ZERO;
                    for e in recv {
                        let t = std::time::Instant::now();
                        pass.push(e);
                        busy += t.elapsed();
                    }
                    let t = std::time::Instant::now();
                    let end = pass.recent.end();
                    pass.fold(end);
                    (
                        Folded {
                            states: pass.states,
                            hist: pass.hist,
                            seen: pass.seen,
                        },
                        pass.cooccur,
                        (busy + t.elapsed()).as_secs_f64(),
                    )
                })
            });
            let result = (|| -> Result<()> {
                for batch in reader {
                    let b = batch?;
                    let take = (b.rows() as u64).min(limit - analysed) as usize;
                    if take == 0 {
                        break;
                    }
                    if b.token_index[0] != analysed {
                        return Err(SaeError::Data(format!(
                            "rows arrived out of order (token {} after {analysed})",
                            b.token_index[0]
                        )));
                    }
                    let x = Tensor::from_slice(&b.data[..take * b.dim])
                        .view([take as i64, b.dim as i64])
                        .to_device(device);
                    let codes = dict.encode(&x);
                    let cpu = |t: &Tensor| t.to_device(Device::Cpu);
                    let encoded = Encoded {
                        first: analysed,
                        rows: take,
                        cols: Vec::<i64>::try_from(cpu(&codes.cols))?,
                        vals: Vec::<f32>::try_from(cpu(&codes.vals.to_kind(Kind::Float)))?,
                        offsets: Vec::<i64>::try_from(cpu(&codes.offsets))?,
                    };
                    let t = std::time::Instant::now();
                    let sent = send.send(encoded);
                    waited += t.elapsed();
                    if sent.is_err() {
                        break; // the folder stopped: its panic surfaces at join
                    }
                    analysed += take as u64;
                    progress(analysed);
                    if analysed >= limit {
                        break;
                    }
                }
                Ok(())
            })();
            drop(send);
            let drain = std::time::Instant::now();
            let folded = folder.join().expect("the feature folder panicked");
            (folded, result, drain.elapsed().as_secs_f64())
        });
    read_result?;
    if analysed == 0 {
        return Err(SaeError::Data("no tokens to analyse".into()));
    }
    let t = std::time::Instant::now();
    let mut a = finish(folded, &cooccur, weights, tokens, token_str, cfg, analysed);
    a.fold_seconds = fold_seconds;
    a.fold_cpu_seconds = pool.broadcast(|_| thread_cpu_seconds()).iter().sum();
    a.drain_seconds = drain_seconds;
    a.wait_seconds = waited.as_secs_f64();
    a.finish_seconds = t.elapsed().as_secs_f64();
    Ok(a)
}

/// What folding leaves: the feature states and their flat tables (see [`Pass`]).
struct Folded {
    states: Vec<FeatureState>,
    hist: Vec<u32>,
    seen: Vec<u64>,
}

/// Turns the feature states into rows, one feature per rayon task. Each feature's windows go
/// into a small column table of their own, appended in feature order at the end.
fn finish(
    folded: Folded,
    cooccur: &Cooccurrence,
    weights: &WeightFacts,
    tokens: &TokenTable,
    token_str: &(dyn Fn(u32) -> String + Sync),
    cfg: &AnalyzeConfig,
    analysed: u64,
) -> Analysis {
    let context = |out: &mut Contexts, f: u32, kind: ContextKind, rank: usize, s: &Sample| {
        let span = s.start as usize..s.start as usize + s.len as usize;
        out.push(Window {
            feature: f,
            kind,
            rank: rank as u16,
            token_index: s.token,
            activation: s.value,
            focus: (s.token - s.start) as u16,
            token_ids: &tokens.token_id[span],
            acts: s.acts(),
        });
    };
    let (hb, rbins) = (cfg.hist_bins, reservoir_bins(cfg));
    let Folded { states, hist, seen } = folded;
    let one = |(fi, mut s): (usize, FeatureState)| {
        let f = fi as u32;
        let seen = &seen[fi * rbins..(fi + 1) * rbins];
        let windows = cfg.top + cfg.intervals * cfg.per_interval;
        let window_len = cfg.window_before + cfg.window_after + 1;
        let mut contexts = Contexts::with_capacity(windows, windows * window_len);
        s.top.sort_by(|a, b| b.value.total_cmp(&a.value));
        for (rank, smp) in s.top.iter().enumerate() {
            context(&mut contexts, f, ContextKind::Top, rank, smp);
        }
        // Reservoir bins to intervals of [0, max] by their centres.
        if s.count > 0 {
            let mut per: Vec<(u64, Vec<Sample>)> = vec![(0, Vec::new()); cfg.intervals];
            for (b, res) in std::mem::take(&mut s.reservoirs).into_iter().enumerate() {
                let centre = (b as f32 + 0.5) * s.range / rbins as f32;
                let i = ((centre / s.max * cfg.intervals as f32) as usize).min(cfg.intervals - 1);
                let (c, old) = std::mem::take(&mut per[i]);
                let key = cfg.seed ^ mix(((f as u64) << 16) | b as u64);
                per[i] = (
                    c + seen[b],
                    merge_reservoirs((c, old), (seen[b], res), cfg.per_interval, key),
                );
            }
            for (i, (_, mut smp)) in per.into_iter().enumerate() {
                smp.sort_by(|a, b| b.value.total_cmp(&a.value));
                for (rank, x) in smp.iter().enumerate() {
                    context(&mut contexts, f, ContextKind::Interval(i as u8), rank, x);
                }
            }
        }
        let neighbours: Vec<NeighbourRow> = weights.neighbours[fi]
            .iter()
            .enumerate()
            .map(|(rank, &(g, cos))| NeighbourRow {
                feature: f,
                rank: rank as u8,
                neighbour: g,
                cosine: cos,
                cooccurrence: cooccur.get(fi, rank),
                // Filled in below, once every count is known.
                jaccard: 0.0,
            })
            .collect();
        let le = weights.logits.get(fi).cloned().unwrap_or_default();
        let names = |v: &[(u32, f32)]| v.iter().map(|&(i, _)| token_str(i)).collect();
        let row = FeatureRow {
            feature: f,
            count: s.count,
            density: s.count as f64 / analysed as f64,
            mean_act: if s.count > 0 {
                (s.sum / s.count as f64) as f32
            } else {
                0.0
            },
            max_act: s.max,
            act_hist: hist[fi * hb..(fi + 1) * hb].to_vec(),
            act_hist_max: s.range,
            logit_top_ids: le.top.iter().map(|p| p.0).collect(),
            logit_top_values: le.top.iter().map(|p| p.1).collect(),
            logit_top_tokens: names(&le.top),
            logit_bottom_ids: le.bottom.iter().map(|p| p.0).collect(),
            logit_bottom_values: le.bottom.iter().map(|p| p.1).collect(),
            logit_bottom_tokens: names(&le.bottom),
            logit_hist: le.hist,
            logit_hist_min: le.min,
            logit_hist_max: le.max,
            head_share: weights.head_share.get(fi).cloned().unwrap_or_default(),
        };
        (row, contexts, neighbours)
    };
    let parts: Vec<_> = states.into_par_iter().enumerate().map(one).collect();
    let mut features = Vec::with_capacity(parts.len());
    let mut contexts = Contexts::with_capacity(
        parts.iter().map(|p| p.1.len()).sum(),
        parts.iter().map(|p| p.1.tokens()).sum(),
    );
    let mut neighbours = Vec::new();
    let mut log_hist = vec![0u64; 20];
    for (row, ctx, nb) in parts {
        let bin = (((row.density + 1e-10).log10() + 10.0) / 0.5)
            .floor()
            .clamp(0.0, 19.0) as usize;
        log_hist[bin] += 1;
        features.push(row);
        contexts.append(&ctx);
        neighbours.extend(nb);
    }
    for nb in &mut neighbours {
        let union = features[nb.feature as usize].count + features[nb.neighbour as usize].count
            - nb.cooccurrence;
        nb.jaccard = if union > 0 {
            nb.cooccurrence as f32 / union as f32
        } else {
            0.0
        };
    }
    Analysis {
        features,
        contexts,
        neighbours,
        tokens: analysed,
        log10_density_histogram: log_hist,
        fold_seconds: 0.0,
        fold_cpu_seconds: 0.0,
        drain_seconds: 0.0,
        wait_seconds: 0.0,
        finish_seconds: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::Cooccurrence;

    /// Short neighbour lists (fewer features than neighbours asked for) leave gaps in the flat
    /// table that never count.
    #[test]
    fn cooccurrence_counts_pairs_and_skips_gaps() {
        let neighbours = vec![
            vec![(1, 0.9), (2, 0.5)],
            vec![(0, 0.9)],
            vec![(1, 0.7), (0, 0.5)],
        ];
        let mut c = Cooccurrence::new(&neighbours);
        let rows: [&[u32]; 4] = [&[0, 1], &[0, 1, 2], &[2], &[1, 2]];
        for r in rows {
            let row: Vec<(u32, f32)> = r.iter().map(|&f| (f, 1.0)).collect();
            c.add_row(&row);
        }
        // Brute force: rows where both fire.
        let both = |f: u32, g: u32| {
            rows.iter()
                .filter(|r| r.contains(&f) && r.contains(&g))
                .count() as u64
        };
        for (f, list) in neighbours.iter().enumerate() {
            for (rank, &(g, _)) in list.iter().enumerate() {
                assert_eq!(c.get(f, rank), both(f as u32, g), "{f} with {g}");
            }
        }
        assert_eq!(c.get(1, 1), 0, "a gap counts nothing");
        assert!(c.bits.iter().all(|&w| w == 0), "the row bitset is cleared");
    }
}
