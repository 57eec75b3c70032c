//! The controls a latent's score is read against, scored on the same windows as its own
//! explanation: another latent's explanation (shuffled), which says how much of a score any
//! explanation of this run's features gets; and an explanation made without a model from the
//! tokens where the latent fires most often (baseline), which says how much a model adds over
//! listing tokens.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use saescope_store::examples::ExampleRow;
use std::collections::HashMap;

/// For each `(latent, explanation)`, another latent's explanation: the latents in a seeded
/// random order, each given its successor's explanation, so that no latent keeps its own (one
/// cycle through all of them). `(latent, donor, explanation)`; empty with fewer than two.
pub fn shuffled(own: &[(u32, String)], seed: u64) -> Vec<(u32, u32, String)> {
    if own.len() < 2 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..own.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut out: Vec<(u32, u32, String)> = order
        .iter()
        .enumerate()
        .map(|(j, &i)| {
            let donor = &own[order[(j + 1) % order.len()]];
            (own[i].0, donor.0, donor.1.clone())
        })
        .collect();
    out.sort_by_key(|x| x.0);
    out
}

/// The baseline explanation of a latent from its activating train windows: the `top` token
/// texts that most often carry a strong activation (above `share` of their window's largest),
/// most frequent first, quoted and joined: `"cat", "dog" or "pets"`. `None` without any.
pub fn baseline(
    active: &[&ExampleRow],
    token_text: &dyn Fn(u32) -> String,
    share: f32,
    top: usize,
) -> Option<String> {
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    let mut seen = 0;
    for r in active {
        let max = r.max_act();
        for (&t, &a) in r.token_ids.iter().zip(&r.acts) {
            if max > 0.0 && a > share * max {
                let text = token_text(t).trim().to_owned();
                if text.is_empty() {
                    continue;
                }
                let e = counts.entry(text).or_insert((0, seen));
                e.0 += 1;
                seen += 1;
            }
        }
    }
    let mut ranked: Vec<(String, (usize, usize))> = counts.into_iter().collect();
    // Most frequent first; ties by first appearance (strongest windows come first).
    ranked.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.1.1.cmp(&b.1.1)));
    let words: Vec<String> = ranked
        .into_iter()
        .take(top.max(1))
        .map(|(t, _)| format!("\"{t}\""))
        .collect();
    match words.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        [rest @ .., last] => Some(format!("{} or {last}", rest.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saescope_store::examples::{ExampleKind, ExampleSet};

    #[test]
    fn shuffled_explanations_are_never_a_latents_own_and_each_is_used_once() {
        let own: Vec<(u32, String)> = (0..9).map(|f| (f * 3, format!("e{f}"))).collect();
        for seed in 0..20 {
            let s = shuffled(&own, seed);
            assert_eq!(s.len(), own.len());
            let mut donors: Vec<u32> = s.iter().map(|x| x.1).collect();
            donors.sort_unstable();
            assert_eq!(donors, own.iter().map(|x| x.0).collect::<Vec<_>>());
            for (latent, donor, text) in &s {
                assert_ne!(latent, donor);
                assert_eq!(text, &format!("e{}", donor / 3));
            }
        }
        assert!(shuffled(&own[..1], 0).is_empty());
    }

    #[test]
    fn the_baseline_lists_the_most_frequent_strong_tokens() {
        let row = |ids: &[u32], acts: &[f32]| ExampleRow {
            latent: 0,
            set: ExampleSet::Train,
            kind: ExampleKind::Activating,
            bin: 0,
            source: 0,
            start: 0,
            token_ids: ids.to_vec(),
            acts: acts.to_vec(),
        };
        let names = |t: u32| [" cat", " dog", " the", " pets"][t as usize].to_owned();
        let rows = [
            row(&[2, 0, 2, 1], &[0.0, 4.0, 0.5, 3.0]),
            row(&[0, 3, 2], &[2.0, 2.0, 0.1]),
            row(&[1, 0], &[0.0, 1.0]),
        ];
        let refs: Vec<&ExampleRow> = rows.iter().collect();
        // cat 3 times, dog once, pets once (after dog); " the" never strong.
        assert_eq!(
            baseline(&refs, &names, 0.3, 3).as_deref(),
            Some("\"cat\", \"dog\" or \"pets\"")
        );
        assert_eq!(baseline(&refs, &names, 0.3, 1).as_deref(), Some("\"cat\""));
        assert_eq!(baseline(&[], &names, 0.3, 3), None);
    }
}
