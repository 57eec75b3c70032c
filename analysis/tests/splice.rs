//! Splicing on the bundled model: a dictionary that returns its input recovers the clean loss
//! exactly, one that returns zeros is exactly the ablation.

use saescope_activations::hooks::HookPoint;
use saescope_analysis::splice::{SpliceAccumulator, SpliceOptions, splice_batch};
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
        assert_eq!(z.ce_loss_recovered, 0.0, "{hook}: {z:?}");
        assert_eq!(z.kl_div_score, 0.0, "{hook}");
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
