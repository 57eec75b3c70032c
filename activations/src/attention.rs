//! Causal self-attention as both model families compute it, given queries, keys and values
//! already projected (and, for Llama, rotated): the mask, the fused path, and the explicit path
//! that captures the pattern for attribution.

use crate::hooks::Hooks;
use tch::{Device, Kind, Tensor};

/// True above the diagonal: the keys a query may not attend to.
pub fn causal_mask(t: i64, device: Device) -> Tensor {
    Tensor::ones([t, t], (Kind::Bool, device)).triu(1)
}

/// softmax(q kᵀ / √d_head + mask) v for q [batch, heads, pos, d_head] and k, v [batch, kv_heads,
/// pos, d_head], each KV head serving heads / kv_heads consecutive query heads; returns z as
/// [batch, pos, heads, d_head]. Without a pattern to capture, libtorch's fused kernel runs it
/// (the pattern is never materialised, KV heads are not copied); with one, it is computed
/// explicitly and captured.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    hooks: &mut Hooks,
    layer: usize,
) -> Tensor {
    let group = q.size()[1] / k.size()[1];
    if !hooks.wants_pattern(layer) {
        return Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            None::<Tensor>,
            0.0,
            true,
            None,
            group > 1,
        )
        .transpose(1, 2);
    }
    let (k, v) = if group > 1 {
        (
            k.repeat_interleave_self_int(group, 1, None),
            v.repeat_interleave_self_int(group, 1, None),
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let scale = 1.0 / (q.size()[3] as f64).sqrt();
    let scores = (q.matmul(&k.transpose(-2, -1)) * scale).masked_fill(mask, f64::NEG_INFINITY);
    // The softmax runs in f32 even for a bf16 model.
    let pattern = scores.softmax(-1, Kind::Float).to_kind(q.kind());
    hooks.store_pattern(layer, &pattern, &v);
    pattern.matmul(&v).transpose(1, 2)
}
