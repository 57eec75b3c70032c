//! The hand-written gradients against libtorch's autograd on the dense formulation, and the
//! small rules (gradient projection, bias adaptation) on hand-computed cases.
// `a = a + b` on purpose: an in-place `+=` would overwrite values autograd still needs.
#![allow(clippy::assign_op_pattern)]

use saescope_sae::gba::{BiasRule, BufferStats, GbaSae};
use saescope_sae::mpsae::MpSae;
use saescope_sae::topk::{AuxK, Selection, TopKSae, project_out_parallel};
use tch::{Device, Kind, Tensor};

fn opts() -> (Kind, Device) {
    (Kind::Double, Device::Cpu)
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    let err = (a - b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1e-6);
    assert!(
        err <= 1e-6 * scale.max(1.0),
        "{what}: max abs diff {err} (scale {scale})"
    );
}

fn topk_sae(selection: Selection) -> TopKSae {
    tch::manual_seed(1);
    let (n, d) = (12, 6);
    let w_dec = Tensor::randn([n, d], opts());
    TopKSae {
        w_enc: Tensor::randn([n, d], opts()),
        b_enc: Tensor::randn([n], opts()) * 0.1,
        w_dec: &w_dec / w_dec.norm_scalaropt_dim(2.0, [1], true),
        b_dec: Tensor::randn([d], opts()) * 0.1,
        k: 3,
        selection,
        threshold: None,
        bf16_select: false,
    }
}

/// The reference loss on dense tensors with autograd, using the manual path's selection.
fn reference(
    sae: &TopKSae,
    x: &Tensor,
    keep: &Tensor,
    aux_keep: Option<(&Tensor, f64)>,
) -> Vec<Tensor> {
    let w_enc = sae.w_enc.copy().set_requires_grad(true);
    let b_enc = sae.b_enc.copy().set_requires_grad(true);
    let w_dec = sae.w_dec.copy().set_requires_grad(true);
    let b_dec = sae.b_dec.copy().set_requires_grad(true);
    let pre = ((x - &b_dec).matmul(&w_enc.tr()) + &b_enc).relu();
    let f = &pre * keep;
    let recon = f.matmul(&w_dec) + &b_dec;
    let total = (x - x.mean_dim(0, true, Kind::Double))
        .square()
        .sum(Kind::Double);
    let mut loss = (&recon - x).square().sum(Kind::Double) / total;
    if let Some((aux_keep, coef)) = aux_keep {
        let e = (x - &recon).detach();
        let e_hat = (&pre * aux_keep).matmul(&w_dec);
        let e_var = (&e - e.mean_dim(0, true, Kind::Double))
            .square()
            .sum(Kind::Double);
        loss = loss + (e_hat - &e).square().sum(Kind::Double) / e_var * coef;
    }
    loss.backward();
    vec![w_enc.grad(), b_enc.grad(), w_dec.grad(), b_dec.grad()]
}

#[test]
fn topk_gradients_match_autograd() {
    for (selection, bf16_select) in [
        (Selection::TopK, false),
        (Selection::BatchTopK, false),
        (Selection::TopK, true),
        (Selection::BatchTopK, true),
    ] {
        // With bf16 selection the chosen values are recomputed exactly, so the gradients
        // still match the f64 reference on the same selection.
        let sae = TopKSae {
            bf16_select,
            ..topk_sae(selection)
        };
        let x = Tensor::randn([9, 6], opts());
        let s = sae.train_step(&x, None, None);
        let keep = s.codes.to_dense().ne(0.0).to_kind(Kind::Double);
        let r = reference(&sae, &x, &keep, None);
        close(&s.grads.w_enc, &r[0], "W_enc");
        close(&s.grads.b_enc, &r[1], "b_enc");
        close(&s.grads.w_dec, &r[2], "W_dec");
        close(&s.grads.b_dec, &r[3], "b_dec");
        let fvu_ref = (&s.recon - &x).square().sum(Kind::Double).double_value(&[])
            / (&x - x.mean_dim(0, true, Kind::Double))
                .square()
                .sum(Kind::Double)
                .double_value(&[]);
        assert!((s.fvu.double_value(&[]) - fvu_ref).abs() < 1e-9);
    }
}

#[test]
fn auxk_gradients_match_autograd_and_use_only_dead_latents() {
    let sae = topk_sae(Selection::TopK);
    let x = Tensor::randn([9, 6], opts());
    // Latents 0..6 dead; the aux pass uses the 2 largest of them per row.
    let dead = Tensor::arange(12, (Kind::Int64, Device::Cpu)).lt(6);
    let aux = AuxK {
        k_aux: 2,
        coefficient: 0.5,
    };
    let s = sae.train_step(&x, Some(&dead), Some(aux));
    let keep = s.codes.to_dense().ne(0.0).to_kind(Kind::Double);
    let (pre, _) = sae.pre_acts(&x);
    let masked = pre.masked_fill(&dead.logical_not(), f64::NEG_INFINITY);
    let (_, idx) = masked.topk(2, 1, true, false);
    let aux_keep = Tensor::zeros([9, 12], opts()).scatter_value(1, &idx, 1.0);
    assert!(aux_keep.narrow(1, 6, 6).sum(Kind::Double).double_value(&[]) == 0.0);
    let r = reference(&sae, &x, &keep, Some((&aux_keep, 0.5)));
    close(&s.grads.w_enc, &r[0], "W_enc with AuxK");
    close(&s.grads.w_dec, &r[2], "W_dec with AuxK");
    close(&s.grads.b_dec, &r[3], "b_dec with AuxK");
    assert!(s.aux.double_value(&[]) > 0.0);
}

#[test]
fn matching_pursuit_gradients_match_autograd_through_the_unroll() {
    tch::manual_seed(2);
    let (n, d) = (16, 5);
    let atoms = Tensor::randn([n, d], opts());
    let atoms = &atoms / atoms.norm_scalaropt_dim(2.0, [1], true);
    let sae = MpSae {
        atoms,
        b_dec: Tensor::randn([d], opts()) * 0.1,
        k: 3,
        bf16_gram: false,
    };
    let x = Tensor::randn([7, d], opts());
    let s = sae.train_step(&x);
    // Reference: the same picks, autograd through α_t = relu(d·r) and r ← r − α d.
    let p = sae.pursue(&x, saescope_sae::mpsae::Stop::steps(3), false);
    let a = sae.atoms.copy().set_requires_grad(true);
    let b = sae.b_dec.copy().set_requires_grad(true);
    let mut r = &x - &b;
    for j in &p.picks {
        let dj = a.index_select(0, j);
        let alpha = (&dj * &r).sum_dim_intlist(1, true, Kind::Double).relu();
        r = r - alpha * dj;
    }
    let total = (&x - x.mean_dim(0, true, Kind::Double))
        .square()
        .sum(Kind::Double);
    (r.square().sum(Kind::Double) / total).backward();
    close(&s.atoms_grad, &a.grad(), "atoms");
    close(&s.b_dec_grad, &b.grad(), "b_dec");
    // Each step is an orthogonal projection: the residual norm never grows.
    let mut prev = f64::INFINITY;
    for t in 1..=4 {
        let q = sae.pursue(&x, saescope_sae::mpsae::Stop::steps(t), false);
        let norm = q.residual.square().sum(Kind::Double).double_value(&[]);
        assert!(norm <= prev + 1e-9);
        prev = norm;
    }
}

#[test]
fn gradient_projection_removes_the_component_along_each_atom() {
    let atoms = Tensor::from_slice(&[1.0f64, 0.0, 0.6, 0.8]).view([2, 2]);
    let mut g = Tensor::from_slice(&[3.0f64, 4.0, 1.0, 0.0]).view([2, 2]);
    project_out_parallel(&mut g, &atoms);
    // Row 0: (3,4) − 3·(1,0) = (0,4). Row 1: (1,0) − 0.6·(0.6,0.8) = (0.64, −0.48).
    let want = Tensor::from_slice(&[0.0f64, 4.0, 0.64, -0.48]).view([2, 2]);
    close(&g, &want, "projected gradient");
}

#[test]
fn bias_adaptation_follows_the_rule_on_a_hand_computed_case() {
    let f = |v: &[f32]| Tensor::from_slice(v);
    let mut sae = GbaSae {
        w_enc: Tensor::zeros([4, 2], (Kind::Float, Device::Cpu)),
        b_enc: f(&[-0.5, -0.5, -0.2, 0.0]),
        w_dec: Tensor::zeros([4, 2], (Kind::Float, Device::Cpu)),
        b_dec: Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        group: Tensor::from_slice(&[0i64, 0, 1, 1]),
        target: f(&[0.1, 0.1, 0.01, 0.01]),
        jump: false,
    };
    let rule = BiasRule {
        groups: 2,
        gamma_down: 0.1,
        gamma_up: 0.5,
        dead_below: 1e-6,
        bias_clamp: 1.0,
        ..BiasRule::default()
    };
    let mut stats = BufferStats::new(4, Device::Cpu);
    stats.tokens = 100;
    // Latent 0 fires 20% (> 10%): lowered by 0.1·2.0. Latent 1 fires 5%: kept. Latent 2 never
    // fires (dead): raised by 0.5·r̄ of group 1 = 0.5·3.0 (latent 3's max is its only positive
    // one), capped at 0. Latent 3 fires 30% (> 1%): lowered by 0.1·3.0.
    stats.fired = f(&[20.0, 5.0, 0.0, 30.0]);
    stats.max_pre = f(&[2.0, 1.0, -0.4, 3.0]);
    sae.adapt_biases(&mut stats, &rule);
    let want = f(&[-0.7, -0.5, 0.0, -0.3]);
    let diff = (&sae.b_enc - want).abs().max().double_value(&[]);
    assert!(
        diff < 1e-6,
        "biases {:?}",
        Vec::<f32>::try_from(&sae.b_enc).unwrap()
    );
    assert_eq!(stats.tokens, 0, "the buffer is cleared");
    assert_eq!(
        BiasRule {
            groups: 3,
            highest: 0.1,
            lowest: 0.001,
            ..BiasRule::default()
        }
        .targets()
        .iter()
        .map(|t| (t * 1e4).round())
        .collect::<Vec<_>>(),
        vec![1000.0, 100.0, 10.0]
    );
}

#[test]
fn gba_gradients_match_autograd_for_both_activations() {
    tch::manual_seed(4);
    let (n, d) = (12, 6);
    let x = Tensor::randn([20, d], opts());
    for jump in [true, false] {
        let w = Tensor::randn([n, d], opts());
        let sae = GbaSae {
            w_enc: Tensor::randn([n, d], opts()),
            b_enc: Tensor::rand([n], opts()) * -0.5,
            w_dec: &w / w.norm_scalaropt_dim(2.0, [1], true),
            b_dec: Tensor::randn([d], opts()) * 0.1,
            group: Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
            target: Tensor::ones([n], opts()),
            jump,
        };
        let mut stats = BufferStats::new(n as usize, Device::Cpu);
        let step = sae.train_step(&x, &mut stats);

        let w_enc = sae.w_enc.copy().set_requires_grad(true);
        let w_dec = sae.w_dec.copy().set_requires_grad(true);
        let b_dec = sae.b_dec.copy().set_requires_grad(true);
        let u = (&x - &b_dec).matmul(&w_enc.tr());
        let pre = &u + &sae.b_enc;
        let f = if jump {
            &u * pre.gt(0.0).to_kind(Kind::Double)
        } else {
            pre.relu()
        };
        let recon = f.matmul(&w_dec) + &b_dec;
        let total = (&x - x.mean_dim(0, true, Kind::Double))
            .square()
            .sum(Kind::Double);
        let loss = (&recon - &x).square().sum(Kind::Double) / total;
        loss.backward();
        close(&step.w_enc, &w_enc.grad(), &format!("jump={jump} W_enc"));
        close(&step.w_dec, &w_dec.grad(), &format!("jump={jump} W_dec"));
        close(&step.b_dec, &b_dec.grad(), &format!("jump={jump} b_dec"));
        close(&step.recon, &recon.detach(), &format!("jump={jump} recon"));
        assert_eq!(stats.tokens, 20);
        let fired = pre.gt(0.0).sum_dim_intlist(0, false, Kind::Double);
        close(&stats.fired.to_kind(Kind::Double), &fired, "firing counts");
    }
}

/// Matching pursuit written the plain way, one token at a time with fresh correlations every
/// step, stopping as SAELens' `_encode_matching_pursuit` does: after each step, a token is done
/// once its support (the atoms with a nonzero code) did not change, if `dup`, or once its
/// residual's norm is below `th`, if `th` > 0.
fn naive_pursuit(
    atoms: &Tensor,
    b_dec: &Tensor,
    x: &Tensor,
    th: f64,
    max: usize,
    dup: bool,
) -> Tensor {
    let n = atoms.size()[0];
    let codes = Tensor::zeros([x.size()[0], n], opts());
    for i in 0..x.size()[0] {
        let mut r = x.get(i) - b_dec;
        let mut support: Vec<bool> = vec![false; n as usize];
        for _ in 0..max {
            let c = atoms.mv(&r).relu();
            let j = c.argmax(0, false).int64_value(&[]);
            let alpha = atoms.get(j).dot(&r).double_value(&[]).max(0.0);
            r = r - atoms.get(j) * alpha;
            let _ = codes.get(i).get(j).g_add_(&Tensor::from(alpha));
            let before = support.clone();
            if alpha > 0.0 {
                support[j as usize] = true;
            }
            let unchanged = dup && support == before;
            let small = th > 0.0 && r.norm().double_value(&[]) < th;
            if unchanged || small {
                break;
            }
        }
    }
    codes
}

#[test]
fn blocked_pursuit_stops_as_saelens_does() {
    tch::manual_seed(5);
    let (n, d) = (40, 8);
    let atoms = Tensor::randn([n, d], opts());
    let atoms = &atoms / atoms.norm_scalaropt_dim(2.0, [1], true);
    let sae = MpSae {
        atoms,
        b_dec: Tensor::randn([d], opts()) * 0.1,
        k: 4,
        bf16_gram: false,
    };
    // More rows than one pursuit block, so blocks stop at different steps; some rows start
    // below the threshold (SAELens still takes their first step).
    let x = Tensor::randn([150, d], opts()) * Tensor::rand([150, 1], opts()) * 2.0;
    for (th, max, dup) in [
        (0.8, 6, false),
        (0.0, 4, false),
        (0.0, 40, true),
        (0.5, 12, true),
    ] {
        let stop = saescope_sae::mpsae::Stop {
            max_steps: max,
            residual_threshold: th,
            duplicate_support: dup,
        };
        let got = sae.encode(&x, stop).to_dense();
        let want = naive_pursuit(&sae.atoms, &sae.b_dec, &x, th, max, dup);
        close(&got.to_kind(Kind::Double), &want, "codes");
        if dup {
            // The rule bites: some token stops before the step limit.
            let l0 = want.ne(0.0).sum_dim_intlist(1, false, Kind::Int64);
            assert!(l0.max().int64_value(&[]) < max as i64, "{th} {max}");
        }
    }
}

#[test]
fn bf16_selection_chooses_like_f32_and_keeps_exact_values() {
    let (n, d, b) = (2048, 64, 256);
    let f = (Kind::Float, Device::Cpu);
    let w_enc = Tensor::randn([n, d], f) / (d as f64).sqrt();
    let b_enc = Tensor::randn([n], f) * 0.01;
    let make = |bf16_select| TopKSae {
        w_enc: w_enc.copy(),
        b_enc: b_enc.copy(),
        w_dec: w_enc.copy(),
        b_dec: Tensor::zeros([d], f),
        k: 32,
        selection: Selection::TopK,
        threshold: None,
        bf16_select,
    };
    let (exact, fast) = (make(false), make(true));
    let x = Tensor::randn([b, d], f);
    let (a, c) = (exact.encode(&x).to_dense(), fast.encode(&x).to_dense());
    let chosen = |t: &Tensor| t.ne(0.0);
    let both = chosen(&a)
        .logical_and(&chosen(&c))
        .sum(Kind::Float)
        .double_value(&[]);
    let agree = both / (32.0 * b as f64);
    assert!(agree > 0.97, "bf16 and f32 agree on {agree} of the choices");
    // Wherever bf16 chose a latent, its value is the f32 pre-activation.
    let (pre, _) = exact.pre_acts(&x);
    let err = ((&c - &pre) * chosen(&c).to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-5, "value error {err}");
}
