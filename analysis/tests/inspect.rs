//! The prompt view and direct feature attribution on the bundled model.

use saescope_activations::hooks::{HookPoint, Hooks};
use saescope_analysis::inspect::{attention_attribution, prompt_view};
use saescope_sae::seeded::Seeded;
use saescope_sae::topk::{Selection, TopKSae};
use saescope_store::features::FeatureRow;
use saescope_store::prompt::quantile;
use tch::{Device, Tensor};

mod common;

fn random_topk(n: i64, d: i64, k: usize, seed: u64) -> TopKSae {
    let mut rng = Seeded::new(seed);
    let w = rng.normal(&[n, d], Device::Cpu);
    TopKSae {
        w_enc: &w / 8.0,
        b_enc: rng.normal(&[n], Device::Cpu) * 0.1,
        w_dec: &w / w.norm_scalaropt_dim(2.0, [1], true),
        b_dec: rng.normal(&[d], Device::Cpu) * 0.05,
        k,
        selection: Selection::TopK,
        threshold: None,
        bf16_select: false,
    }
}

fn prompt() -> (saescope_activations::model::Model, Vec<u32>) {
    let (model, tok) = common::model();
    let mut ids = vec![tok.bos.unwrap()];
    ids.extend(tok.encode(common::TEXT).unwrap().into_iter().take(30));
    (model, ids)
}

#[test]
fn head_and_source_attributions_add_up_to_the_pre_activation() {
    let (model, ids) = prompt();
    let point: HookPoint = "blocks.3.attn.hook_z".parse().unwrap();
    let sae = random_topk(64, 576, 8, 1);
    // The pre-activations straight from the hook, for comparison.
    let input =
        Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).view([1, -1]);
    let mut hooks = Hooks::new().capture(point);
    model.forward(&input, &mut hooks, false).unwrap();
    let z = hooks.take(point).unwrap().reshape([ids.len() as i64, -1]);
    let pre = (&z - &sae.b_dec).matmul(&sae.w_enc.tr()) + &sae.b_enc;
    let mut checked = 0;
    for (feature, dest) in [(0u32, 5usize), (7, 20), (63, 30), (31, 1)] {
        let a = attention_attribution(&model, &sae, point, &ids, &|i| i.to_string(), feature, dest)
            .unwrap();
        let want = pre.double_value(&[dest as i64, feature as i64]);
        assert!(
            (a.pre_activation as f64 - want).abs() < 1e-4,
            "{} vs {want}",
            a.pre_activation
        );
        let sum: f64 = a.by_head_source.iter().flatten().map(|&x| x as f64).sum();
        assert!(
            (sum - (a.pre_activation - a.constant) as f64).abs() < 1e-4,
            "feature {feature} at {dest}: heads and sources sum to {sum}, pre − constant is {}",
            a.pre_activation - a.constant
        );
        assert_eq!(a.by_head_source.len(), 9);
        assert!(a.by_head_source.iter().all(|h| h.len() == dest + 1));
        assert_eq!(a.tokens.len(), dest + 1);
        checked += 1;
    }
    assert_eq!(checked, 4);
    // Not for residual dictionaries.
    let resid: HookPoint = "blocks.3.hook_resid_post".parse().unwrap();
    assert!(attention_attribution(&model, &sae, resid, &ids, &|i| i.to_string(), 0, 1).is_err());
}

#[test]
fn prompt_view_lists_each_tokens_strongest_features() {
    let (model, ids) = prompt();
    let point: HookPoint = "blocks.4.hook_resid_post".parse().unwrap();
    let sae = random_topk(128, 576, 6, 2);
    let view = prompt_view(&model, &sae, point, &ids, &|i| format!("<{i}>"), 3, None).unwrap();
    assert_eq!(view.tokens.len(), ids.len());
    let input =
        Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).view([1, -1]);
    let mut hooks = Hooks::new().capture(point);
    model.forward(&input, &mut hooks, false).unwrap();
    let x = hooks.take(point).unwrap().reshape([ids.len() as i64, -1]);
    let dense = sae.encode(&x).to_dense();
    for t in &view.tokens {
        assert_eq!(t.token, format!("<{}>", t.token_id));
        let row = Vec::<f32>::try_from(dense.get(t.position as i64)).unwrap();
        let mut want: Vec<(usize, f32)> = row
            .iter()
            .copied()
            .enumerate()
            .filter(|p| p.1 != 0.0)
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        want.truncate(3);
        let got: Vec<(usize, f32)> = t
            .features
            .iter()
            .map(|f| (f.feature as usize, f.activation))
            .collect();
        assert_eq!(got, want, "position {}", t.position);
    }
}

#[test]
fn quantiles_come_from_the_activation_histogram() {
    let row = FeatureRow {
        act_hist: vec![10, 0, 30, 60],
        act_hist_max: 4.0,
        ..FeatureRow::default()
    };
    assert_eq!(quantile(&row, 0.0), Some(0.0));
    assert_eq!(quantile(&row, 1.0), Some(0.1));
    assert_eq!(quantile(&row, 2.5), Some(0.25)); // 10 + half of 30, of 100
    assert_eq!(quantile(&row, 4.0), Some(1.0));
    assert_eq!(quantile(&row, 9.0), Some(1.0));
    assert_eq!(quantile(&FeatureRow::default(), 1.0), None);
}
