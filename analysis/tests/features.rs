//! The streaming feature analysis against a brute-force pass that holds every activation: counts,
//! histograms, top contexts with their windows, interval samples, co-occurrence, neighbours and
//! logit effects.

use saescope_analysis::features::{
    AnalyzeConfig, TokenTable, WeightFacts, analyze, decoder_neighbours, head_share, logit_effects,
};
use saescope_sae::dictionary::Dictionary;
use saescope_sae::seeded::Seeded;
use saescope_store::features::ContextKind;
use tch::{Device, Kind};

mod synthetic_run;
use synthetic_run::{CTX, D, N, TOKENS, brute_force, dictionary, small_run};

#[test]
fn streaming_analysis_matches_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let run = small_run(dir.path());
    let sae = dictionary();
    let tokens = TokenTable::read(&run).unwrap();
    let vocab = 40i64;
    let unembed = Seeded::new(4).normal(&[vocab, D as i64], Device::Cpu);
    let atoms = sae.atoms();
    let weights = WeightFacts {
        neighbours: decoder_neighbours(&atoms, 5),
        logits: logit_effects(&atoms, None, &unembed, 3, 10),
        head_share: Vec::<Vec<f32>>::try_from(head_share(&atoms, 4)).unwrap(),
    };
    let cfg = AnalyzeConfig {
        batch_tokens: 256, // windows straddle batches
        ..AnalyzeConfig::default()
    };
    let a = analyze(
        &sae,
        &run,
        "blocks.0.hook_resid_post",
        &tokens,
        &weights,
        &|t| format!("<{t}>"),
        &cfg,
        Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(a.tokens, TOKENS);
    let dense = brute_force(&run, &sae, &tokens);
    let value = |t: u64, f: usize| dense[t as usize][f];

    let mut checked_intervals = 0;
    for f in 0..N {
        let row = &a.features[f];
        let acts: Vec<(f32, u64)> = (0..TOKENS)
            .map(|t| (value(t, f), t))
            .filter(|&(v, _)| v > 0.0)
            .collect();
        assert_eq!(row.count, acts.len() as u64, "feature {f} count");
        if acts.is_empty() {
            continue;
        }
        let max = acts.iter().map(|p| p.0).fold(0.0f32, f32::max);
        let mean = acts.iter().map(|p| p.0 as f64).sum::<f64>() / acts.len() as f64;
        assert_eq!(row.max_act, max);
        assert!((row.mean_act as f64 - mean).abs() < 1e-5 * mean.max(1.0));
        // The histogram over [0, R): R a power of two above the max, counts exact.
        let r = row.act_hist_max;
        assert!(
            r > max && r <= 2.0 * max * 1.0001,
            "range {r} for max {max}"
        );
        let mut hist = vec![0u32; 50];
        for &(v, _) in &acts {
            hist[((v / r * 50.0) as usize).min(49)] += 1;
        }
        assert_eq!(row.act_hist, hist, "feature {f} histogram");

        // Top contexts: the 20 largest activations, in order, with exact windows.
        let mut sorted = acts.clone();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
        let tops: Vec<_> = a
            .contexts
            .iter()
            .filter(|c| c.feature == f as u32 && c.kind == ContextKind::Top)
            .collect();
        assert_eq!(tops.len(), sorted.len().min(20));
        for (c, want) in tops.iter().zip(&sorted) {
            assert_eq!(c.activation, want.0, "feature {f} rank {}", c.rank);
            let t = c.token_index;
            let pos = tokens.context_pos[t as usize] as u64;
            let lo = t - pos.min(12);
            assert_eq!(t - c.focus as u64, lo, "window start");
            let hi = (t + 4).min(t - pos + CTX as u64 - 1).min(TOKENS - 1);
            assert_eq!(c.acts.len() as u64, hi - lo + 1, "window length");
            for (j, &x) in c.acts.iter().enumerate() {
                assert_eq!(x, value(lo + j as u64, f));
                assert_eq!(c.token_ids[j], tokens.token_id[(lo + j as u64) as usize]);
            }
        }

        // Interval samples: min(5, values there) per interval, each in its interval (by the
        // centre of its reservoir bin, at most max/10 wide).
        let interval_of = |v: f32| {
            let b = ((v / r * 20.0) as usize).min(19);
            let centre = (b as f32 + 0.5) * r / 20.0;
            ((centre / max * 10.0) as usize).min(9)
        };
        for i in 0..10u8 {
            let have: Vec<_> = a
                .contexts
                .iter()
                .filter(|c| c.feature == f as u32 && c.kind == ContextKind::Interval(i))
                .collect();
            let there = acts
                .iter()
                .filter(|p| interval_of(p.0) == i as usize)
                .count();
            assert_eq!(have.len(), there.min(5), "feature {f} interval {i}");
            for c in have {
                assert_eq!(interval_of(c.activation), i as usize);
                assert_eq!(c.activation, value(c.token_index, f));
                checked_intervals += 1;
            }
        }

        // Co-occurrence with each decoder neighbour.
        for nb in a.neighbours.iter().filter(|n| n.feature == f as u32) {
            let g = nb.neighbour as usize;
            let both = (0..TOKENS)
                .filter(|&t| value(t, f) > 0.0 && value(t, g) > 0.0)
                .count() as u64;
            assert_eq!(nb.cooccurrence, both, "feature {f} with {g}");
        }
    }
    assert!(
        checked_intervals > 100,
        "{checked_intervals} interval samples"
    );

    // Neighbours and logit effects against direct computations.
    let a64 = atoms.to_kind(Kind::Double);
    let norms = a64.norm_scalaropt_dim(2.0, [1], true);
    let cos = (&a64 / &norms).matmul(&(&a64 / &norms).tr());
    let u64_ = unembed.to_kind(Kind::Double);
    for f in [0usize, 7, 31, 47] {
        let mut sims: Vec<(f64, usize)> = (0..N)
            .filter(|&g| g != f)
            .map(|g| (cos.double_value(&[f as i64, g as i64]), g))
            .collect();
        sims.sort_by(|a, b| b.0.total_cmp(&a.0));
        let got: Vec<usize> = a
            .neighbours
            .iter()
            .filter(|n| n.feature == f as u32)
            .map(|n| n.neighbour as usize)
            .collect();
        assert_eq!(got, sims.iter().take(5).map(|p| p.1).collect::<Vec<_>>());
        let effect: Vec<f64> = (0..vocab)
            .map(|v| {
                (0..D)
                    .map(|j| {
                        a64.double_value(&[f as i64, j as i64]) * u64_.double_value(&[v, j as i64])
                    })
                    .sum()
            })
            .collect();
        let mut order: Vec<usize> = (0..vocab as usize).collect();
        order.sort_by(|&x, &y| effect[y].total_cmp(&effect[x]));
        let row = &a.features[f];
        assert_eq!(
            row.logit_top_ids,
            order[..3].iter().map(|&i| i as u32).collect::<Vec<_>>()
        );
        assert_eq!(
            row.logit_bottom_ids,
            order[order.len() - 3..]
                .iter()
                .rev()
                .map(|&i| i as u32)
                .collect::<Vec<_>>()
        );
        for (id, v) in row.logit_top_ids.iter().zip(&row.logit_top_values) {
            assert!((effect[*id as usize] - *v as f64).abs() < 1e-4);
        }
        assert_eq!(row.logit_hist.iter().sum::<u32>(), vocab as u32);
        let share: f32 = row.head_share.iter().sum();
        assert!((share - 1.0).abs() < 1e-5);
    }
}

#[test]
fn logit_effects_go_through_the_projection_into_the_residual_stream() {
    // A z-like dictionary: atoms of width 12 written into a residual of width 5 by W [5, 12].
    let mut rng = Seeded::new(9);
    let atoms = rng.normal(&[6, 12], Device::Cpu);
    let w = rng.normal(&[5, 12], Device::Cpu);
    let unembed = rng.normal(&[30, 5], Device::Cpu);
    let effects = logit_effects(&atoms, Some(&w), &unembed, 4, 8);
    let direct = atoms
        .to_kind(Kind::Double)
        .matmul(&w.to_kind(Kind::Double).tr())
        .matmul(&unembed.to_kind(Kind::Double).tr());
    for (f, e) in effects.iter().enumerate() {
        let row = Vec::<f64>::try_from(direct.get(f as i64)).unwrap();
        let mut order: Vec<usize> = (0..30).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top: Vec<u32> = order[..4].iter().map(|&i| i as u32).collect();
        assert_eq!(e.top.iter().map(|p| p.0).collect::<Vec<_>>(), top);
        for &(id, v) in &e.top {
            assert!((row[id as usize] - v as f64).abs() < 1e-4);
        }
        let bottom: Vec<u32> = order[26..].iter().rev().map(|&i| i as u32).collect();
        assert_eq!(e.bottom.iter().map(|p| p.0).collect::<Vec<_>>(), bottom);
        assert_eq!(e.hist.iter().sum::<u32>(), 30);
        let (lo, hi) = (row[order[29]], row[order[0]]);
        assert!((e.min as f64 - lo).abs() < 1e-4 && (e.max as f64 - hi).abs() < 1e-4);
    }
}
