//! The prompt view: run the model and a dictionary on one prompt and say, token by token, which
//! features are active, how strongly, and where that falls in each feature's distribution; for
//! attention-output dictionaries, which heads and source tokens built a feature's activation.
//! Returns the plain data of [`saescope_store::prompt`], so the CLI and the desktop app format it
//! as they like without linking the model.

use crate::error::{AnalysisError, Result};
use crate::session::Session;
use saescope_activations::hooks::{HookKind, HookPoint, Hooks};
use saescope_activations::model::Model;
use saescope_sae::Dictionary;
use saescope_store::features::FeatureRow;
use saescope_store::prompt::{ActiveFeature, Attribution, PromptView, TokenView, quantile};
use tch::{Device, Kind, Tensor};

/// The hook's value on `ids` as rows [positions, width].
fn hook_rows(
    model: &Model,
    point: HookPoint,
    ids: &[u32],
    hooks: Hooks,
) -> Result<(Tensor, Hooks)> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let input = Tensor::from_slice(&ids).view([1, -1]);
    let mut hooks = hooks.capture(point);
    model.forward(&input, &mut hooks, false)?;
    let x = hooks.take(point).expect("captured");
    let rows = x.size()[1];
    Ok((x.to_kind(Kind::Float).reshape([rows, -1]), hooks))
}

/// Each token's `top` most active features. `features` (the feature store's rows, indexed by
/// feature) adds quantiles.
pub fn prompt_view(
    model: &Model,
    dict: &dyn Dictionary,
    point: HookPoint,
    ids: &[u32],
    token_str: &dyn Fn(u32) -> String,
    top: usize,
    features: Option<&[FeatureRow]>,
) -> Result<PromptView> {
    let _g = tch::no_grad_guard();
    let (x, _) = hook_rows(model, point, ids, Hooks::new())?;
    let codes = dict.encode(&x);
    let cols = Vec::<i64>::try_from(codes.cols.to_device(Device::Cpu))?;
    let vals = Vec::<f32>::try_from(codes.vals.to_kind(Kind::Float).to_device(Device::Cpu))?;
    let offs = Vec::<i64>::try_from(codes.offsets.to_device(Device::Cpu))?;
    let tokens = ids
        .iter()
        .enumerate()
        .map(|(p, &id)| {
            let (s, e) = (
                offs[p] as usize,
                offs.get(p + 1).map_or(cols.len(), |&o| o as usize),
            );
            let mut active: Vec<ActiveFeature> = (s..e)
                .filter(|&j| vals[j] != 0.0)
                .map(|j| ActiveFeature {
                    feature: cols[j] as u32,
                    activation: vals[j],
                    quantile: features
                        .and_then(|f| f.get(cols[j] as usize))
                        .and_then(|row| quantile(row, vals[j])),
                })
                .collect();
            active.sort_by(|a, b| b.activation.total_cmp(&a.activation));
            active.truncate(top);
            TokenView {
                position: p,
                token_id: id,
                token: token_str(id),
                features: active,
            }
        })
        .collect();
    Ok(PromptView {
        hook: point.to_string(),
        tokens,
    })
}

/// Direct feature attribution for an `attn.hook_z` dictionary: how much each head reading
/// each source position contributed to `feature`'s pre-activation at `dest`.
pub fn attention_attribution(
    model: &Model,
    dict: &dyn Dictionary,
    point: HookPoint,
    ids: &[u32],
    token_str: &dyn Fn(u32) -> String,
    feature: u32,
    dest: usize,
) -> Result<Attribution> {
    let _g = tch::no_grad_guard();
    if point.kind != HookKind::AttnZ {
        return Err(AnalysisError::Config(format!(
            "attribution by head needs an attn.hook_z dictionary, not {point}"
        )));
    }
    let Some(enc) = dict.encoder() else {
        return Err(AnalysisError::Config(
            "attribution needs a dictionary with a linear encoder (TopK, BatchTopK, GBA) over tokens as they are (no per-token normalisation)".into(),
        ));
    };
    if feature as usize >= dict.n_latents() || dest >= ids.len() {
        return Err(AnalysisError::Config(format!(
            "feature {feature} or destination {dest} out of range ({} features, {} tokens)",
            dict.n_latents(),
            ids.len()
        )));
    }
    let (z, mut hooks) = hook_rows(model, point, ids, Hooks::new().capture_pattern(point.layer))?;
    let pattern = hooks
        .take_pattern(point.layer)
        .expect("pattern captured")
        .to_kind(Kind::Float)
        .get(0); // [heads, q, k]
    let values = hooks
        .take_values(point.layer)
        .expect("values captured")
        .to_kind(Kind::Float)
        .get(0); // [heads, k, d_head]
    let heads = values.size()[0];
    let w = enc
        .w
        .get(feature as i64)
        .to_kind(Kind::Float)
        .to_device(z.device());
    let w_heads = w.view([heads, -1]); // [heads, d_head]
    // v_h[src] · w[f, head h]: [heads, k]
    let proj = values.matmul(&w_heads.unsqueeze(2)).squeeze_dim(2);
    let dfa = pattern.select(1, dest as i64) * proj; // [heads, k]
    let b_enc = enc.b_enc.double_value(&[feature as i64]);
    let constant = b_enc - enc.b_dec.to_kind(Kind::Float).dot(&w).double_value(&[]);
    let pre = z.get(dest as i64).dot(&w).double_value(&[]) + constant;
    let by_head_source = (0..heads)
        .map(|h| {
            Vec::<f32>::try_from(
                dfa.get(h)
                    .narrow(0, 0, dest as i64 + 1)
                    .to_device(Device::Cpu),
            )
            .expect("f32")
        })
        .collect();
    Ok(Attribution {
        feature,
        dest,
        pre_activation: pre as f32,
        constant: constant as f32,
        by_head_source,
        tokens: ids[..=dest].iter().map(|&i| token_str(i)).collect(),
    })
}

impl Session {
    /// Each token's `top` most active features on `ids`, with quantiles from `features` (the
    /// feature store's rows) when given.
    pub fn prompt_view(
        &self,
        ids: &[u32],
        top: usize,
        features: Option<&[FeatureRow]>,
    ) -> Result<PromptView> {
        let names = |i: u32| self.model.tokenizer.decode(&[i]).unwrap_or_default();
        prompt_view(
            &self.model.model,
            self.opened.dict.as_dyn(),
            self.opened.point,
            ids,
            &names,
            top,
            features,
        )
    }

    /// `feature`'s attribution at token `dest` of `ids`, by head and source token.
    pub fn attribution(&self, ids: &[u32], feature: u32, dest: usize) -> Result<Attribution> {
        let names = |i: u32| self.model.tokenizer.decode(&[i]).unwrap_or_default();
        attention_attribution(
            &self.model.model,
            self.opened.dict.as_dyn(),
            self.opened.point,
            ids,
            &names,
            feature,
            dest,
        )
    }
}
