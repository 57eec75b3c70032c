//! The learners' CPU-kernel paths (f32: the own selection and pursuit kernels) against their
//! tensor paths (f64, which the kernels do not take, as on a GPU): the same choices, codes,
//! loss and gradients, with AuxK's dead-latent selection and BatchTopK's batch-wide one.

use saescope_sae::mpsae::{MpSae, Stop};
use saescope_sae::topk::{AuxK, Selection, TopKSae};
use tch::{Device, Kind, Tensor};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

/// Agreement within f32 rounding, relative to the reference's largest entry.
fn close(got: &Tensor, want: &Tensor, what: &str) {
    let err = (got.to_kind(Kind::Double) - want)
        .abs()
        .max()
        .double_value(&[]);
    let scale = want.abs().max().double_value(&[]).max(1e-3);
    assert!(err <= 2e-4 * scale, "{what}: off by {err} (scale {scale})");
}

fn f32(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Float)
}

/// `sae`'s parameters in `kind`, with `selection`.
fn as_kind(sae: &TopKSae, selection: Selection, kind: Kind) -> TopKSae {
    TopKSae {
        w_enc: sae.w_enc.to_kind(kind),
        b_enc: sae.b_enc.to_kind(kind),
        w_dec: sae.w_dec.to_kind(kind),
        b_dec: sae.b_dec.to_kind(kind),
        k: sae.k,
        selection,
        threshold: None,
        bf16_select: false,
    }
}

/// Wide enough (300 latents, k = 5) that the two-pass row selection and the bounded batch
/// selection run, not their fallbacks.
#[test]
fn topk_and_batchtopk_steps_match_the_tensor_path() {
    tch::manual_seed(31);
    let (n, d, b) = (300, 24, 40);
    let w_dec = Tensor::randn([n, d], F64);
    let wide = TopKSae {
        w_enc: Tensor::randn([n, d], F64) / (d as f64).sqrt(),
        b_enc: Tensor::randn([n], F64) * 0.1,
        w_dec: &w_dec / w_dec.norm_scalaropt_dim(2.0, [1], true),
        b_dec: Tensor::randn([d], F64) * 0.1,
        k: 5,
        selection: Selection::TopK,
        threshold: None,
        bf16_select: false,
    };
    let x = Tensor::randn([b, d], F64);
    let dead = Tensor::rand([n], F64).lt(0.4);
    let aux = AuxK {
        k_aux: 7,
        coefficient: 0.5,
    };
    for selection in [Selection::TopK, Selection::BatchTopK] {
        for with_aux in [false, true] {
            let exact = as_kind(&wide, selection, Kind::Double);
            let fast = as_kind(&wide, selection, Kind::Float);
            let (dead, aux) = if with_aux {
                (Some(&dead), Some(aux))
            } else {
                (None, None)
            };
            let want = exact.train_step(&x, dead, aux);
            let got = fast.train_step(&f32(&x), dead, aux);
            let what = format!("{selection:?}, AuxK {with_aux}");
            assert_eq!(
                got.codes.cols.size(),
                want.codes.cols.size(),
                "{what}: entries"
            );
            // Within a row the kernel lists the chosen latents largest first, libtorch in its
            // own order: the same sets.
            let chosen = |c: &saescope_sae::sparse::SparseCodes| c.to_dense().ne(0.0);
            assert!(
                chosen(&got.codes).equal(&chosen(&want.codes)),
                "{what}: chosen latents"
            );
            close(
                &got.codes.to_dense(),
                &want.codes.to_dense(),
                &format!("{what}: codes"),
            );
            let v = |t: &Tensor| t.double_value(&[]);
            assert!((v(&got.fvu) - v(&want.fvu)).abs() < 1e-5, "{what}: FVU");
            assert!(
                (v(&got.aux) - v(&want.aux)).abs() < 1e-4 * v(&want.aux).max(1.0),
                "{what}: AuxK"
            );
            if with_aux {
                assert!(v(&want.aux) > 0.0, "{what}: the dead latents took part");
            }
            close(
                &got.grads.w_enc,
                &want.grads.w_enc,
                &format!("{what}: W_enc"),
            );
            close(
                &got.grads.b_enc,
                &want.grads.b_enc,
                &format!("{what}: b_enc"),
            );
            close(
                &got.grads.w_dec,
                &want.grads.w_dec,
                &format!("{what}: W_dec"),
            );
            close(
                &got.grads.b_dec,
                &want.grads.b_dec,
                &format!("{what}: b_dec"),
            );
            let encoded = fast.encode(&f32(&x));
            close(
                &encoded.to_dense(),
                &exact.encode(&x).to_dense(),
                &format!("{what}: encode"),
            );
        }
    }
}

#[test]
fn matching_pursuit_step_and_codes_match_the_tensor_path() {
    tch::manual_seed(32);
    let (n, d, b, k) = (70, 20, 30, 6);
    let atoms = Tensor::randn([n, d], F64);
    let exact = MpSae {
        atoms: &atoms / atoms.norm_scalaropt_dim(2.0, [1], true),
        b_dec: Tensor::randn([d], F64) * 0.1,
        k,
        bf16_gram: false,
    };
    let fast = MpSae {
        atoms: f32(&exact.atoms),
        b_dec: f32(&exact.b_dec),
        k,
        bf16_gram: false,
    };
    let x = Tensor::randn([b, d], F64) * 2.0;
    let (want, got) = (exact.train_step(&x), fast.train_step(&f32(&x)));
    assert!(got.codes.cols.equal(&want.codes.cols), "chosen atoms");
    close(&got.codes.to_dense(), &want.codes.to_dense(), "codes");
    close(&got.recon, &want.recon, "reconstruction");
    let fvu = |t: &Tensor| t.double_value(&[]);
    assert!((fvu(&got.fvu) - fvu(&want.fvu)).abs() < 1e-5, "FVU");
    close(&got.atoms_grad, &want.atoms_grad, "atom gradients");
    close(&got.b_dec_grad, &want.b_dec_grad, "b_dec gradient");
    let (codes, reference) = (
        fast.encode(&f32(&x), Stop::steps(k)),
        exact.encode(&x, Stop::steps(k)),
    );
    close(&codes.to_dense(), &reference.to_dense(), "encode");
}
