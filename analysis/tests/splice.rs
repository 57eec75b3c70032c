//! Splicing on the bundled model: a dictionary that returns its input recovers the clean loss
//! exactly, one that returns zeros is exactly the ablation, and the figures equal three whole
//! forward passes computed by hand.

use saescope_activations::hooks::{HookPoint, Hooks, Intervention};
use saescope_analysis::splice::{
    SpliceAccumulator, SpliceOptions, ablation_is_shared, splice_batch,
};
use saescope_sae::dictionary::Dictionary;
use saescope_sae::sparse::SparseCodes;
use tch::{Device, Kind, Tensor};

mod common;
use common::model_and_ids;

/// Reconstruction = input (`Identity(true)`) or zero (`Identity(false)`).
struct Identity(bool, usize);

impl Dictionary for Identity {
    fn d_in(&self) -> usize {
        self.1
    }
    fn n_latents(&self) -> usize {
        self.1
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        SparseCodes::from_dense(&if self.0 {
            x.shallow_clone()
        } else {
            x.zeros_like()
        })
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        codes.to_dense()
    }
    fn atoms(&self) -> Tensor {
        Tensor::eye(self.1 as i64, (Kind::Float, Device::Cpu))
    }
}

/// Reconstruction = half the input: a dictionary that is neither exact nor empty.
struct Halved(usize);

impl Dictionary for Halved {
    fn d_in(&self) -> usize {
        self.0
    }
    fn n_latents(&self) -> usize {
        self.0
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        SparseCodes::from_dense(&(x * 0.5))
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        codes.to_dense()
    }
    fn atoms(&self) -> Tensor {
        Tensor::eye(self.0 as i64, (Kind::Float, Device::Cpu))
    }
}

/// The spliced and ablated runs start at the hook's block from the clean residual stream; the
/// figures must be those of three whole passes, each from the embedding, with the hook's value
/// replaced (BOS kept clean) and the losses and KL computed here in f64. A residual hook's
/// ablated run is made once for the whole batch, since every context starts with BOS; with the
/// second context's first token changed, each context gets its own run, and that is checked too.
#[test]
fn splicing_equals_three_whole_passes() {
    let (m, ids) = model_and_ids();
    let mixed = ids.copy();
    let _ = mixed.get(1).get(0).fill_(2);
    for (hook, ids, shared) in [
        ("blocks.14.hook_resid_post", &ids, true),
        ("blocks.14.hook_resid_post", &mixed, false),
        ("blocks.20.hook_resid_pre", &ids, true),
        ("blocks.15.attn.hook_z", &ids, false),
        ("blocks.0.hook_resid_pre", &ids, true),
    ] {
        let (b, t) = ids.size2().unwrap();
        let point: HookPoint = hook.parse().unwrap();
        let width = m.hook_shape(point.kind).iter().product::<usize>();
        let opts = SpliceOptions {
            point,
            exclude_bos: true,
            head: None,
        };
        assert_eq!(ablation_is_shared(&opts, ids), shared, "{hook}");
        let mut acc = SpliceAccumulator::new(width, width);
        splice_batch(&m, &Halved(width), ids, &opts, &mut acc).unwrap();
        let r = acc.finish(&opts);

        let pass = |scale: Option<f64>| {
            let mut h = Hooks::new().capture(point);
            let clean = m.forward(ids, &mut h, true).unwrap().unwrap();
            let Some(scale) = scale else { return clean };
            let x = h.take(point).unwrap();
            let value = &x * scale;
            value.narrow(1, 0, 1).copy_(&x.narrow(1, 0, 1)); // BOS stays clean
            let mut h = Hooks::new().intervene(point, Intervention::Replace(value));
            m.forward(ids, &mut h, true).unwrap().unwrap()
        };
        let logp = |scale| {
            pass(scale)
                .to_kind(Kind::Double)
                .log_softmax(-1, Kind::Double)
        };
        let (clean, spliced, ablated) = (logp(None), logp(Some(0.5)), logp(Some(0.0)));
        let targets = ids.narrow(1, 1, t - 1).unsqueeze(2);
        let ce = |lp: &Tensor| {
            -lp.narrow(1, 0, t - 1)
                .gather(2, &targets, false)
                .mean(Kind::Double)
                .double_value(&[])
        };
        let kl = |lp: &Tensor| {
            (clean.exp() * (&clean - lp))
                .sum(Kind::Double)
                .double_value(&[])
                / (b * t) as f64
        };
        let close = |got: f64, want: f64, what: &str| {
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{hook} {what}: splice {got}, whole passes {want}"
            );
        };
        close(r.ce_clean, ce(&clean), "clean CE");
        close(r.ce_spliced, ce(&spliced), "spliced CE");
        close(r.ce_ablated, ce(&ablated), "ablated CE");
        close(r.kl_spliced, kl(&spliced), "spliced KL");
        close(r.kl_ablated, kl(&ablated), "ablated KL");
        assert!(
            r.kl_spliced > 1e-3 && r.kl_ablated > r.kl_spliced,
            "{hook}: the splice must change the model: {r:?}"
        );
        eprintln!(
            "{hook}: CE clean {:.5} spliced {:.5} ablated {:.5}, KL {:.5} / {:.5}",
            r.ce_clean, r.ce_spliced, r.ce_ablated, r.kl_spliced, r.kl_ablated
        );
    }
}

#[test]
fn identity_recovers_everything_and_zero_recovers_nothing() {
    let (m, ids) = model_and_ids();
    for (hook, width) in [
        ("blocks.3.hook_resid_post", 576),
        ("blocks.5.attn.hook_z", 576),
    ] {
        let point: HookPoint = hook.parse().unwrap();
        let opts = SpliceOptions {
            point,
            exclude_bos: true,
            head: None,
        };
        let mut same = SpliceAccumulator::new(width, width);
        splice_batch(&m, &Identity(true, width), &ids, &opts, &mut same).unwrap();
        let r = same.finish(&opts);
        assert_eq!(r.ce_loss_recovered, 1.0, "{hook}: {r:?}");
        assert_eq!(r.kl_spliced, 0.0, "{hook}");
        assert_eq!(r.delta_lm_loss, 0.0, "{hook}");
        assert_eq!(r.reconstruction.fvu, 0.0, "{hook}");
        assert_eq!(r.reconstruction.tokens, 46, "BOS positions are left out");
        // Zeroing the residual stream ruins the model; one attention layer matters less (on
        // short text it can even lower the loss), but it changes the distribution.
        if hook.contains("resid") {
            assert!(r.ce_ablated > r.ce_clean + 1.0, "{hook}: {r:?}");
        }
        assert!(r.kl_ablated > 0.01, "{hook}: {r:?}");

        let mut zero = SpliceAccumulator::new(width, width);
        splice_batch(&m, &Identity(false, width), &ids, &opts, &mut zero).unwrap();
        let z = zero.finish(&opts);
        // The ablated run of a residual hook is one context's, broadcast: equal to the
        // spliced zeros up to how the matmuls round a batch of 1 and one of 2.
        assert!(z.ce_loss_recovered.abs() < 1e-6, "{hook}: {z:?}");
        assert!(z.kl_div_score.abs() < 1e-6, "{hook}: {z:?}");
        assert_eq!(
            z.ce_clean, r.ce_clean,
            "the clean run does not depend on the dictionary"
        );
    }
}

#[test]
fn one_head_ablation_changes_less_than_all_heads() {
    let (m, ids) = model_and_ids();
    let point: HookPoint = "blocks.5.attn.hook_z".parse().unwrap();
    let run = |head| {
        let opts = SpliceOptions {
            point,
            exclude_bos: true,
            head,
        };
        let mut acc = SpliceAccumulator::new(576, 576);
        splice_batch(&m, &Identity(true, 576), &ids, &opts, &mut acc).unwrap();
        acc.finish(&opts)
    };
    let (all, one) = (run(None), run(Some(2)));
    eprintln!(
        "KL ablating head 2: {}, all heads: {}",
        one.kl_ablated, all.kl_ablated
    );
    assert!(one.kl_ablated > 0.0);
    assert!(one.kl_ablated < all.kl_ablated);
    assert_eq!(one.ce_loss_recovered, 1.0);
}

/// The splice's cross-entropy against transformers' own loss (`labels=ids`) on tiny checkpoints
/// (`reference/make_ce_fixture.py`): clean, and with block 0's output zeroed, which is what a
/// dictionary that reconstructs zeros splices in. A label shifted by one position, or a
/// prediction scored at the wrong place, fails here.
#[test]
fn cross_entropy_matches_transformers() {
    use saescope_activations::model::Model;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let refs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("tests/fixtures/ce.json")).unwrap())
            .unwrap();
    for name in ["llama", "gpt2"] {
        let dir = root.join("../activations/tests/fixtures/hf").join(name);
        let m = Model::load(&dir, Device::Cpu, Kind::Float).unwrap().model;
        let r = &refs[name];
        let rows: Vec<Vec<i64>> = serde_json::from_value(r["ids"].clone()).unwrap();
        let ids = Tensor::from_slice(&rows.concat()).view([rows.len() as i64, -1]);
        let point: HookPoint = "blocks.0.hook_resid_post".parse().unwrap();
        let width = m.hook_shape(point.kind)[0];
        let opts = SpliceOptions {
            point,
            exclude_bos: false,
            head: None,
        };
        let mut zero = SpliceAccumulator::new(width, width);
        splice_batch(&m, &Identity(false, width), &ids, &opts, &mut zero).unwrap();
        let z = zero.finish(&opts);
        let close = |got: f64, key: &str| {
            let want = r[key].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-5,
                "{name} {key}: saescope {got}, transformers {want}"
            );
        };
        close(z.ce_clean, "ce_clean");
        close(z.ce_ablated, "ce_ablated");
        close(z.ce_spliced, "ce_ablated");
    }
}
