//! The run cut into windows, and one latent's train and test sets drawn from them.
//!
//! Windows are fixed: each context is cut every `width` tokens from its first one, so a window
//! never crosses a context and every token is in exactly one window. The run is split at a
//! window start into a train range (from the start) and a test range (the rest): a train window
//! and a test window never share a token, by construction. In each range the latent's
//! activating windows are ranked by their largest activation and cut into equal-count bins (as
//! delphi bins; SAEDashboard's intervals are equal-width instead), and the same number is drawn
//! from every bin. Silent windows come at random from the same range, or, as hard negatives,
//! from the strongest windows of the latent's nearest decoder neighbours.

use rand::Rng;
use rand::SeedableRng;
use rand::seq::index;
use rand_chacha::ChaCha8Rng;
use saescope_store::examples::ExampleSet;
use std::collections::HashSet;
use std::ops::Range;

/// The run's windows, in token order.
pub struct Windows {
    starts: Vec<u64>,
    end: u64,
}

impl Windows {
    /// Cuts every context (a token at context position 0 starts one) every `width` tokens.
    pub fn new(context_pos: &[u32], width: usize) -> Windows {
        let starts = context_pos
            .iter()
            .enumerate()
            .filter(|(_, p)| (**p as usize).is_multiple_of(width))
            .map(|(t, _)| t as u64)
            .collect();
        Windows {
            starts,
            end: context_pos.len() as u64,
        }
    }

    /// Windows in the run.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether the run is empty.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The window holding token `t`.
    pub fn of(&self, t: u64) -> usize {
        self.starts.partition_point(|&s| s <= t) - 1
    }

    /// Window `i`'s tokens.
    pub fn span(&self, i: usize) -> Range<u64> {
        self.starts[i]..self.starts.get(i + 1).copied().unwrap_or(self.end)
    }

    /// The first window of the test range: the first to start at or after `share` of the run.
    pub fn split(&self, share: f64) -> usize {
        let at = (self.end as f64 * share.clamp(0.0, 1.0)).ceil() as u64;
        self.starts.partition_point(|&s| s < at)
    }

    /// The windows of a set's range.
    pub fn range(&self, set: ExampleSet, split: usize) -> Range<usize> {
        match set {
            ExampleSet::Train => 0..split,
            ExampleSet::Test => split..self.len(),
        }
    }
}

/// A latent's activating windows with their largest activation, in window order, from its
/// firings (token, activation) in token order.
pub fn activating(windows: &Windows, firings: &[(u64, f32)]) -> Vec<(usize, f32)> {
    let mut out: Vec<(usize, f32)> = Vec::new();
    for &(t, a) in firings {
        let w = windows.of(t);
        match out.last_mut() {
            Some((last, max)) if *last == w => *max = max.max(a),
            _ => out.push((w, a)),
        }
    }
    out
}

/// Draws `n` of `active` (windows in one range, any order) spread evenly over `bins`
/// equal-count bins of their ranking by activation, strongest bin 0: (window, bin) pairs.
pub fn stratified(
    active: &[(usize, f32)],
    n: usize,
    bins: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<(usize, i16)> {
    let mut ranked = active.to_vec();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let len = ranked.len();
    let bins = bins.clamp(1, len.max(1));
    let mut out = Vec::with_capacity(n.min(len));
    for b in 0..bins {
        let members = &ranked[b * len / bins..(b + 1) * len / bins];
        let quota = (n / bins + usize::from(b < n % bins)).min(members.len());
        for i in index::sample(rng, members.len(), quota) {
            out.push((members[i].0, b as i16));
        }
    }
    out.sort_unstable();
    out
}

/// Up to `n` windows of `range` where the latent is silent (not in `active`, which may hold
/// windows of other ranges too), drawn at random
/// without replacement; rejection keeps it cheap on runs of billions of tokens.
pub fn random_silent(
    range: Range<usize>,
    active: &HashSet<usize>,
    n: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<usize> {
    let busy = active.iter().filter(|w| range.contains(w)).count();
    let silent = range.len() - busy;
    let want = n.min(silent);
    let mut chosen = HashSet::with_capacity(want);
    let mut tries = 0usize;
    while chosen.len() < want && tries < 100 * want + 1000 {
        tries += 1;
        let w = rng.random_range(range.clone());
        if !active.contains(&w) {
            chosen.insert(w);
        }
    }
    let mut out: Vec<usize> = chosen.into_iter().collect();
    out.sort_unstable();
    out
}

/// Up to `n` hard negatives: each neighbour's strongest windows in `range` (at most
/// `per_neighbour` from each, nearest neighbour first) where the latent is silent; each comes
/// with the neighbour that chose it.
pub fn neighbour_silent(
    neighbours: &[(u32, Vec<(usize, f32)>)],
    range: Range<usize>,
    active: &HashSet<usize>,
    n: usize,
    per_neighbour: usize,
) -> Vec<(usize, u32)> {
    let mut taken = HashSet::new();
    let mut out = Vec::new();
    for (g, windows) in neighbours {
        let mut theirs: Vec<&(usize, f32)> = windows
            .iter()
            .filter(|(w, _)| range.contains(w) && !active.contains(w))
            .collect();
        theirs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for &&(w, _) in theirs.iter().take(per_neighbour) {
            if out.len() == n {
                return out;
            }
            if taken.insert(w) {
                out.push((w, *g));
            }
        }
    }
    out
}

/// The random stream for one latent's draws in one set: independent of which other latents
/// are drawn, so asking for more latents later gives the same windows for these.
pub fn stream(seed: u64, latent: u32, set: ExampleSet) -> ChaCha8Rng {
    let set = match set {
        ExampleSet::Train => 0u64,
        ExampleSet::Test => 1,
    };
    ChaCha8Rng::seed_from_u64(
        seed ^ (u64::from(latent) << 2 | set).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(contexts: &[usize]) -> Vec<u32> {
        contexts.iter().flat_map(|&n| 0..n as u32).collect()
    }

    #[test]
    fn windows_cut_each_context_and_cover_every_token_once() {
        let w = Windows::new(&positions(&[10, 7, 4]), 4);
        // 10 → 4,4,2; 7 → 4,3; 4 → 4.
        let spans: Vec<_> = (0..w.len()).map(|i| w.span(i)).collect();
        assert_eq!(spans, vec![0..4, 4..8, 8..10, 10..14, 14..17, 17..21]);
        for t in 0..21 {
            assert!(spans[w.of(t)].contains(&t));
        }
        // Half of 21 tokens is 10.5: the test range starts at the first window from token 11.
        assert_eq!(w.split(0.5), 4);
        assert_eq!(w.range(ExampleSet::Train, 4), 0..4);
        assert_eq!(w.range(ExampleSet::Test, 4), 4..6);
    }

    #[test]
    fn activating_windows_keep_their_largest_activation() {
        let w = Windows::new(&positions(&[8, 8]), 4);
        let fired = [(1, 0.5), (2, 2.0), (9, 1.0), (15, 3.0)];
        assert_eq!(activating(&w, &fired), vec![(0, 2.0), (2, 1.0), (3, 3.0)]);
    }

    #[test]
    fn stratified_draws_spread_over_equal_count_bins() {
        // 100 windows with activation = window index: bin b holds ranks 10b..10b+10, that is
        // windows 99-10b down to 90-10b.
        let active: Vec<(usize, f32)> = (0..100).map(|w| (w, w as f32)).collect();
        let mut rng = stream(1, 7, ExampleSet::Train);
        let got = stratified(&active, 40, 10, &mut rng);
        assert_eq!(got.len(), 40);
        for b in 0..10i16 {
            let in_bin: Vec<usize> = got.iter().filter(|p| p.1 == b).map(|p| p.0).collect();
            assert_eq!(in_bin.len(), 4, "bin {b}");
            let hi = 99 - 10 * b as usize;
            assert!(
                in_bin.iter().all(|&w| w <= hi && w + 9 >= hi),
                "bin {b}: {in_bin:?}"
            );
        }
        // 43 over 10 bins: the three strongest bins give one more; fewer windows than asked
        // gives them all.
        let got = stratified(&active, 43, 10, &mut rng);
        assert_eq!(got.iter().filter(|p| p.1 == 2).count(), 5);
        assert_eq!(got.iter().filter(|p| p.1 == 3).count(), 4);
        assert_eq!(stratified(&active[..7], 40, 10, &mut rng).len(), 7);
    }

    #[test]
    fn silent_windows_avoid_the_active_ones() {
        // Active windows outside the range (0..10) do not count against it.
        let active: HashSet<usize> = (0..60).collect();
        let mut rng = stream(0, 1, ExampleSet::Test);
        let got = random_silent(10..70, &active, 8, &mut rng);
        assert_eq!(got.len(), 8);
        assert!(got.iter().all(|w| (60..70).contains(w)));
        // Fewer silent windows than asked: all of them.
        assert_eq!(
            random_silent(10..70, &active, 50, &mut rng),
            (60..70).collect::<Vec<_>>()
        );
        let neighbours = vec![
            (4, vec![(61, 5.0), (12, 9.0), (65, 7.0), (3, 8.0)]),
            (8, vec![(65, 1.0), (66, 2.0)]),
        ];
        // Neighbour 4's strongest silent windows in range, then neighbour 8's; none twice.
        assert_eq!(
            neighbour_silent(&neighbours, 10..70, &active, 3, 10),
            vec![(65, 4), (61, 4), (66, 8)]
        );
    }
}
