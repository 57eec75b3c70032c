//! Example sets against every activation computed by brute force on a synthetic run: windows
//! hold the latent's true activations, the train and test sets come from disjoint token
//! ranges, activating windows are spread over equal-count bins, silent windows are silent (and
//! hard negatives are where a neighbour fires), and short latents are reported, not dropped.

use saescope_analysis::AnalysisError;
use saescope_analysis::examples::{ExampleConfig, ExampleSets, build_examples};
use saescope_analysis::features::{TokenTable, decoder_neighbours};
use saescope_sae::dictionary::Dictionary;
use saescope_sae::topk::TopKSae;
use saescope_store::Run;
use saescope_store::examples::{ExampleKind, ExampleSet};
use std::collections::HashMap;
use tch::Device;

mod synthetic_run;
use synthetic_run::{N, TOKENS, brute_force, dictionary, small_run};

const HOOK: &str = "blocks.0.hook_resid_post";

fn config() -> ExampleConfig {
    ExampleConfig {
        window: 8,
        min_activating: 40,
        train: 12,
        test: 15,
        bins: 3,
        random: 5,
        neighbour: 6,
        neighbours: 3,
        per_neighbour: 4,
        batch_tokens: 700,
        ..ExampleConfig::default()
    }
}

/// Draws on the synthetic run with the random dictionary, its nearest 3 decoder neighbours
/// giving the hard negatives.
fn draw(
    fixture: &Fixture,
    latents: &[u32],
    cfg: &ExampleConfig,
) -> Result<ExampleSets, AnalysisError> {
    let neighbours = |f: u32| fixture.neighbours(f);
    build_examples(
        &fixture.sae,
        &fixture.run,
        HOOK,
        &fixture.tokens,
        latents,
        &neighbours,
        cfg,
        Device::Cpu,
        &mut |_| {},
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    run: Run,
    sae: TopKSae,
    tokens: TokenTable,
    near: Vec<Vec<(u32, f32)>>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let run = small_run(dir.path());
        let sae = dictionary();
        let tokens = TokenTable::read(&run).unwrap();
        let near = decoder_neighbours(&sae.atoms(), 3);
        Fixture {
            _dir: dir,
            run,
            sae,
            tokens,
            near,
        }
    }

    fn neighbours(&self, f: u32) -> Vec<u32> {
        self.near[f as usize].iter().map(|n| n.0).collect()
    }
}

#[test]
fn example_sets_match_brute_force_and_never_share_a_token() {
    let fx = Fixture::new();
    let tokens = &fx.tokens;
    let dense = brute_force(&fx.run, &fx.sae, tokens); // [token][latent], BOS rows zero
    let neighbours = |f: u32| fx.neighbours(f);
    let cfg = config();
    let all: Vec<u32> = (0..N as u32).collect();
    let sets = draw(&fx, &all, &cfg).unwrap();
    assert_eq!(sets.tokens, TOKENS);
    // The cut is the first window start at or after half the run (contexts of 32, windows of 8).
    assert_eq!(sets.split_token, 1504);

    // Windows: 8 tokens from each context position 0, 8, 16, 24.
    let window_of = |t: u64| t - t % 8;
    let act = |f: u32, t: u64| dense[t as usize][f as usize];
    let active_windows = |f: u32, range: std::ops::Range<u64>| -> Vec<(u64, f32)> {
        let mut w: Vec<(u64, f32)> = range
            .step_by(8)
            .map(|s| (s, (s..s + 8).map(|t| act(f, t)).fold(0.0, f32::max)))
            .filter(|&(_, m)| m > 0.0)
            .collect();
        w.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        w
    };
    let mut by_latent: HashMap<u32, Vec<_>> = HashMap::new();
    for r in &sets.rows {
        by_latent.entry(r.latent).or_default().push(r);
    }
    let mut checked = 0;
    for f in 0..N as u32 {
        let total = active_windows(f, 0..TOKENS).len();
        let Some(rows) = by_latent.get(&f) else {
            assert!(
                sets.skipped.contains(&(f, total)),
                "latent {f} neither drawn nor reported"
            );
            assert!(total < cfg.min_activating);
            continue;
        };
        assert!(total >= cfg.min_activating);
        for r in rows {
            assert_eq!(r.start, window_of(r.start), "windows start every 8 tokens");
            let span = r.start..r.start + 8;
            // The set's range: train before the cut, test after; never both.
            match r.set {
                ExampleSet::Train => assert!(span.end <= sets.split_token),
                ExampleSet::Test => assert!(span.start >= sets.split_token),
            }
            let truth: Vec<f32> = span.clone().map(|t| act(f, t)).collect();
            let err = r
                .acts
                .iter()
                .zip(&truth)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-5, "latent {f} window {}: {err}", r.start);
            assert_eq!(
                r.token_ids,
                tokens.token_id[span.start as usize..span.end as usize]
            );
            match r.kind {
                ExampleKind::Activating => assert!(r.max_act() > 0.0),
                ExampleKind::Random => assert_eq!(r.max_act(), 0.0),
                ExampleKind::Neighbour => {
                    assert_eq!(r.max_act(), 0.0);
                    assert!(neighbours(f).contains(&r.source));
                    assert!(
                        span.clone().any(|t| act(r.source, t) > 0.0),
                        "the neighbour fires"
                    );
                }
            }
        }
        // Activating windows: as many as asked (or all there are), spread evenly over the
        // equal-count bins of the set's own ranking, and each in the bin its rank gives.
        for (set, range, n) in [
            (ExampleSet::Train, 0..sets.split_token, cfg.train),
            (ExampleSet::Test, sets.split_token..TOKENS, cfg.test),
        ] {
            let windows_in_range = (range.end - range.start) as usize / 8;
            let ranked = active_windows(f, range);
            let drawn: Vec<_> = rows
                .iter()
                .filter(|r| r.set == set && r.kind == ExampleKind::Activating)
                .collect();
            assert_eq!(drawn.len(), n.min(ranked.len()), "latent {f} {set:?}");
            for r in &drawn {
                let rank = ranked.iter().position(|w| w.0 == r.start).unwrap();
                let bin = (0..cfg.bins)
                    .find(|&b| rank < (b + 1) * ranked.len() / cfg.bins)
                    .unwrap();
                assert_eq!(r.bin as usize, bin, "latent {f} window {}", r.start);
            }
            if ranked.len() >= n {
                for b in 0..cfg.bins as i16 {
                    let c = drawn.iter().filter(|r| r.bin == b).count();
                    assert_eq!(c, n / cfg.bins + usize::from((b as usize) < n % cfg.bins));
                }
            }
            let silent = rows
                .iter()
                .filter(|r| r.set == set && r.kind == ExampleKind::Random)
                .count();
            // As many as asked where there are enough silent windows; all of them otherwise.
            assert_eq!(silent, cfg.random.min(windows_in_range - ranked.len()));
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} latents had enough windows");
    assert!(
        sets.rows.iter().any(|r| r.kind == ExampleKind::Neighbour),
        "no hard negatives were drawn"
    );

    // The same request draws the same windows; a latent's windows do not depend on which
    // other latents are asked for.
    let again = draw(&fx, &all, &cfg).unwrap();
    assert_eq!(again.rows, sets.rows);
    let one = *by_latent.keys().min().unwrap();
    let alone = draw(&fx, &[one], &cfg).unwrap();
    let mine: Vec<_> = sets
        .rows
        .iter()
        .filter(|r| r.latent == one)
        .cloned()
        .collect();
    assert_eq!(alone.rows, mine);
}

#[test]
fn bad_requests_are_refused_by_name() {
    let fx = Fixture::new();
    for (latents, cfg, message) in [
        (
            vec![N as u32],
            config(),
            format!("latent {N}: the dictionary has {N} latents"),
        ),
        (vec![], config(), "no latents".to_owned()),
        (
            vec![0],
            ExampleConfig {
                train_share: 1.0,
                ..config()
            },
            "train_share 1".to_owned(),
        ),
    ] {
        let e = draw(&fx, &latents, &cfg).unwrap_err();
        assert!(e.to_string().contains(&message), "{e}");
    }
    assert_eq!(fx.sae.n_latents(), N);
}
