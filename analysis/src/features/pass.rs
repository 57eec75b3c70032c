//! The streaming pass's state: each feature's statistics, top list and interval reservoirs,
//! the last rows of codes that windows still reach, and co-occurrence with decoder neighbours.
//! [`Pass::push`] folds one encoded batch in.

use super::config::{AnalyzeConfig, MAX_WINDOW, TokenTable, reservoir_bins};
use rayon::prelude::*;
use std::collections::VecDeque;

/// One activating token with its window of the feature's activations.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) value: f32,
    pub(crate) token: u64,
    /// Token index of the window's first token.
    pub(crate) start: u64,
    pub(crate) len: u8,
    pub(crate) acts: [f32; MAX_WINDOW],
}

impl Sample {
    pub(crate) fn acts(&self) -> &[f32] {
        &self.acts[..self.len as usize]
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct FeatureState {
    pub(crate) count: u64,
    pub(crate) sum: f64,
    pub(crate) max: f32,
    /// Histogram range [0, range); 0 until the first value. The histogram and the
    /// reservoirs' counts live in [`Pass`]'s flat tables.
    pub(crate) range: f32,
    pub(crate) reservoirs: Vec<Vec<Sample>>,
    pub(crate) top: Vec<Sample>,
    /// `top`'s values, apart so that finding the smallest reads a few cache lines, not every
    /// sample's window.
    pub(crate) top_values: Vec<f32>,
    /// The smallest value in a full `top`, and where it is.
    pub(crate) top_min: (usize, f32),
}

/// The sparse codes of the rows not yet folded and of the few before them that windows still
/// reach, in one flat buffer.
pub(crate) struct Recent {
    /// Token index of the oldest row kept.
    pub(crate) base: u64,
    pub(crate) entries: Vec<(u32, f32)>,
    /// Absolute offset (counting dropped entries) where each kept row ends.
    pub(crate) ends: VecDeque<usize>,
    /// Absolute offset of `entries[0]`, and where row `base` starts.
    pub(crate) front: usize,
    pub(crate) first_start: usize,
}

impl Recent {
    pub(crate) fn new() -> Self {
        Recent {
            base: 0,
            entries: Vec::new(),
            ends: VecDeque::new(),
            front: 0,
            first_start: 0,
        }
    }
    pub(crate) fn row(&self, token: u64) -> Option<&[(u32, f32)]> {
        let i = token.checked_sub(self.base)? as usize;
        let end = *self.ends.get(i)?;
        let start = if i == 0 {
            self.first_start
        } else {
            self.ends[i - 1]
        };
        Some(&self.entries[start - self.front..end - self.front])
    }
    pub(crate) fn end(&self) -> u64 {
        self.base + self.ends.len() as u64
    }
    pub(crate) fn push(&mut self, row: &[(u32, f32)]) {
        self.entries.extend_from_slice(row);
        self.ends.push_back(self.front + self.entries.len());
    }
    pub(crate) fn pop_front(&mut self) {
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
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Keeps `k` of two reservoirs' samples, each pool weighted by how many values it stands for
/// (Efraimidis–Spirakis keys u^(1/w)), so the result is again a uniform sample of the union.
pub(crate) fn merge_reservoirs(
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

/// One encoded batch, in CSR form on the CPU.
pub(crate) struct Encoded {
    pub(crate) first: u64,
    pub(crate) rows: usize,
    pub(crate) cols: Vec<i64>,
    pub(crate) vals: Vec<f32>,
    pub(crate) offsets: Vec<i64>,
}

/// The streaming pass's state.
pub(crate) struct Pass<'a> {
    pub(crate) cfg: &'a AnalyzeConfig,
    pub(crate) tokens: &'a TokenTable,
    pub(crate) states: Vec<FeatureState>,
    /// Every feature's activation histogram and the number of values each of its reservoirs
    /// stands for, as flat [features × bins] tables: folding walks the features in order and
    /// reads these as it goes, instead of following a pointer per feature.
    pub(crate) hist: Vec<u32>,
    pub(crate) seen: Vec<u64>,
    pub(crate) recent: Recent,
    /// Next row whose entries have not been folded into the states.
    pub(crate) next_focus: u64,
    pub(crate) cooccur: Cooccurrence,
    /// Buffers reused across batches.
    pub(crate) row_buf: Vec<(u32, f32)>,
    pub(crate) entries: Vec<(u32, f32)>,
    pub(crate) starts: Vec<usize>,
}

impl Pass<'_> {
    /// The window of feature `f` around token `t` (same context only). `fired` is `f`'s
    /// nonzero entries in token order, as (token − `origin`, value), and `i` is `t`'s entry:
    /// the window's activations are read off its neighbours in that list, a few entries in
    /// cache, instead of looked up in every row of the window.
    pub(crate) fn window(&self, t: u64, fired: &[(u32, f32)], i: usize, origin: u64) -> Sample {
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
    pub(crate) fn push(&mut self, e: Encoded) {
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
    pub(crate) fn fold(&mut self, until: u64) {
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
    pub(crate) fn update(
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
pub(crate) struct Bins<'a> {
    pub(crate) hist: &'a mut [u32],
    pub(crate) seen: &'a mut [u64],
}

/// Co-occurrence of each feature with its decoder neighbours, counted row by row with a bitset
/// of the row's active features (a few hundred bit tests a row instead of a search per pair).
/// Neighbour ids and counts are flat [features × neighbours] tables in rank order, so a row's
/// active feature costs two adjacent reads rather than a walk to its own list.
pub(crate) struct Cooccurrence {
    /// Neighbour ids; [`Cooccurrence::NONE`] past a short list.
    pub(crate) ids: Vec<u32>,
    pub(crate) counts: Vec<u64>,
    pub(crate) per: usize,
    pub(crate) bits: Vec<u64>,
}

impl Cooccurrence {
    const NONE: u32 = u32::MAX;

    pub(crate) fn new(neighbours: &[Vec<(u32, f32)>]) -> Self {
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

    pub(crate) fn add_row(&mut self, row: &[(u32, f32)]) {
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

    pub(crate) fn get(&self, f: usize, rank: usize) -> u64 {
        self.counts.get(f * self.per + rank).copied().unwrap_or(0)
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
