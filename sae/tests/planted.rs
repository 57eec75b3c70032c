//! Planted ground truth: each learner must recover a known dictionary from synthetic data.

use saescope_sae::data::MemorySource;
use saescope_sae::synthetic::{Planted, flat, hierarchical, recovery};
use saescope_sae::train::{TrainConfig, train};
use saescope_sae::{AnyDictionary, Method};
use tch::{Device, Kind, Tensor};

fn source(p: &Planted, seed: u64) -> MemorySource {
    let data = Vec::<f32>::try_from(p.data.reshape([-1])).unwrap();
    MemorySource {
        data,
        dim: p.data.size()[1] as usize,
        seed,
    }
}

fn fit(p: &Planted, cfg: TrainConfig) -> (AnyDictionary, f64, saescope_sae::metrics::Metrics) {
    let dir = tempfile::tempdir().unwrap();
    let src = source(p, 1);
    let report = train(
        &src,
        Some(&src),
        &cfg,
        dir.path(),
        false,
        Device::Cpu,
        &Default::default(),
        &mut (),
    )
    .unwrap();
    let rec = recovery(&p.atoms, &report.dictionary.as_dyn().atoms());
    let log = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap_or_default();
    eprintln!(
        "{:?}: last log {}",
        cfg.method,
        log.lines().last().unwrap_or("")
    );
    (report.dictionary, rec, report.metrics.unwrap())
}

fn base(method: Method) -> TrainConfig {
    TrainConfig {
        method,
        latents: 512,
        k: 4,
        batch_tokens: 512,
        tokens: 512 * 1500,
        lr: Some(3e-3),
        warmup_steps: 50,
        init_tokens: 4096,
        eval_tokens: 20_000,
        dead_tokens: 20_000,
        log_every: 100,
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

/// Both selection precisions, whatever this CPU would pick by default: bf16 selection only
/// chooses latents, so recovery must not depend on it.
const BF16: [bool; 2] = [false, true];

#[test]
fn topk_recovers_a_planted_dictionary() {
    let p = flat(512, 64, 40_000, 4, 0.01, 7);
    for bf16 in BF16 {
        let cfg = TrainConfig {
            bf16_select: Some(bf16),
            ..base(Method::TopK)
        };
        let (_, rec, m) = fit(&p, cfg);
        eprintln!(
            "topk (bf16 selection {bf16}): recovery {rec:.3}, fvu {:.4}, l0 {:.2}, dead {:.3}",
            m.fvu, m.l0, m.dead_fraction
        );
        assert!(rec >= 0.9, "bf16 {bf16}: mean best cosine {rec}");
        assert!(m.fvu < 0.25, "bf16 {bf16}: fvu {}", m.fvu);
    }
}

#[test]
fn mpsae_recovers_a_planted_dictionary() {
    let p = flat(512, 64, 40_000, 4, 0.01, 8);
    for bf16 in BF16 {
        let cfg = TrainConfig {
            bf16_select: Some(bf16),
            ..base(Method::MpSae)
        };
        let (_, rec, m) = fit(&p, cfg);
        eprintln!(
            "mpsae (bf16 Gram {bf16}): recovery {rec:.3}, fvu {:.4}, l0 {:.2}",
            m.fvu, m.l0
        );
        assert!(rec >= 0.9, "bf16 {bf16}: mean best cosine {rec}");
    }
}

#[test]
fn gba_recovers_a_planted_dictionary() {
    let p = flat(512, 64, 40_000, 4, 0.01, 9);
    let mut cfg = base(Method::Gba);
    // Atoms fire at 4/512 ≈ 0.008: four groups targeting 0.02 down to 0.005 bracket it. Only
    // latents that fire learn, so GBA needs a larger step and more of them than TopK.
    cfg.gba.buffer_tokens = 4096;
    cfg.gba.gamma_down = 0.05;
    cfg.gba.gamma_up = 0.05;
    cfg.gba.highest = 0.02;
    cfg.gba.lowest = 0.005;
    cfg.gba.groups = 4;
    cfg.lr = Some(1e-2);
    cfg.tokens = 512 * 4000;
    let (_, rec, m) = fit(&p, cfg);
    eprintln!("gba: recovery {rec:.3}, fvu {:.4}, l0 {:.2}", m.fvu, m.l0);
    assert!(rec >= 0.9, "mean best cosine {rec}");
    assert!(m.l0 < 6.0, "l0 {}", m.l0);
}

#[test]
fn snmf_factorises_nonnegative_mixtures() {
    // SNMF's codes are nonnegative and its features sparse over neurons: plant exactly that.
    tch::manual_seed(3);
    let (n, m, k) = (3000i64, 128i64, 16i64);
    let f = Tensor::randn([k, m], (Kind::Float, Device::Cpu));
    let keep = Tensor::rand([k, m], (Kind::Float, Device::Cpu))
        .lt(0.1)
        .to_kind(Kind::Float);
    let f = &f * keep;
    let g = Tensor::rand([n, k], (Kind::Float, Device::Cpu))
        * Tensor::rand([n, k], (Kind::Float, Device::Cpu))
            .lt(0.2)
            .to_kind(Kind::Float);
    let a = g.matmul(&f);
    let p = Planted { atoms: f, data: a };
    let mut cfg = base(Method::Snmf);
    cfg.latents = 16;
    cfg.tokens = 3000;
    cfg.snmf.sparsity = 0.1;
    cfg.snmf.max_iter = 300;
    let (_, rec, met) = fit(&p, cfg);
    eprintln!(
        "snmf: recovery {rec:.3}, fvu {:.4}, l0 {:.2}",
        met.fvu, met.l0
    );
    // The README states 0.014 (0.0138 seen here).
    assert!(met.fvu < 0.02, "fvu {}", met.fvu);
}

#[test]
fn topk_on_hierarchical_data_reports_recovery() {
    let p = hierarchical(64, 3, 64, 40_000, 2, 0.01, 11);
    let mut cfg = base(Method::TopK);
    cfg.latents = 256;
    cfg.k = 4;
    let (_, rec, m) = fit(&p, cfg);
    eprintln!("topk hierarchical: recovery {rec:.3}, fvu {:.4}", m.fvu);
    assert!(rec > 0.5, "recovery {rec}");
}

/// On trained dictionaries (the near-ties that matter are those training produces, not a random
/// matrix's), bf16 selection chooses the latents f32 chooses: TopK and BatchTopK selection, and
/// MP-SAE's pursuit with its bf16 Gram matrix. Seeded; the fractions are printed.
#[test]
fn bf16_selection_agrees_with_f32_on_trained_dictionaries() {
    use saescope_sae::mpsae::Stop;
    use saescope_sae::topk::Selection;
    let p = flat(512, 64, 40_000, 4, 0.01, 11);
    let x = p.data.narrow(0, 0, 4096);
    let agreement = |a: &Tensor, b: &Tensor| {
        let (ca, cb) = (a.ne(0.0), b.ne(0.0));
        let both = ca.logical_and(&cb).sum(Kind::Float).double_value(&[]);
        both / ca.sum(Kind::Float).double_value(&[]).max(1.0)
    };
    let short = |method| TrainConfig {
        tokens: 512 * 400,
        bf16_select: Some(false),
        ..base(method)
    };
    let (topk, _, _) = fit(&p, short(Method::TopK));
    let AnyDictionary::TopK(mut sae) = topk else {
        panic!("a TopK dictionary")
    };
    for selection in [Selection::TopK, Selection::BatchTopK] {
        sae.selection = selection;
        let mut chosen = Vec::new();
        for bf16 in [false, true] {
            sae.bf16_select = bf16;
            let (pre, xc) = sae.pre_acts(&x);
            chosen.push(sae.select(&pre, &xc).to_dense());
        }
        let agree = agreement(&chosen[0], &chosen[1]);
        eprintln!("{selection:?}: bf16 selection agrees on {agree:.4} of the choices");
        assert!(agree > 0.97, "{selection:?}: {agree}");
    }
    let (mp, _, _) = fit(&p, short(Method::MpSae));
    let AnyDictionary::Mp(mut mp) = mp else {
        panic!("an MP-SAE dictionary")
    };
    let mut chosen = Vec::new();
    for bf16 in [false, true] {
        mp.sae.bf16_gram = bf16;
        chosen.push(mp.sae.encode(&x, Stop::steps(4)).to_dense());
    }
    let agree = agreement(&chosen[0], &chosen[1]);
    eprintln!("MP-SAE: the bf16 Gram agrees on {agree:.4} of the choices");
    assert!(agree > 0.97, "MP-SAE: {agree}");
}
