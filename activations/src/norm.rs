//! LayerNorm with a gain and a bias, as GPT-2 and GPT-NeoX apply it before attention, before the
//! MLP and before the unembedding. (The Llama and Gemma families' RMSNorms differ in how the gain
//! is stored and in the dtype they reduce in, so each family keeps its own.)

use tch::Tensor;

/// A LayerNorm's weights, [d] each.
pub(crate) struct LayerNorm {
    /// The gain.
    pub w: Tensor,
    /// The bias.
    pub b: Tensor,
}

impl LayerNorm {
    /// The LayerNorm `name` of width `d`: its `name.weight` and `name.bias` through `get`
    /// (which checks their shapes).
    pub fn load<E>(
        get: impl Fn(&str, &[usize]) -> Result<Tensor, E>,
        name: &str,
        d: usize,
    ) -> Result<LayerNorm, E> {
        Ok(LayerNorm {
            w: get(&format!("{name}.weight"), &[d])?,
            b: get(&format!("{name}.bias"), &[d])?,
        })
    }

    /// x normalised over its last dimension (whose width is the gain's), then scaled and shifted.
    pub fn apply(&self, x: &Tensor, eps: f64) -> Tensor {
        x.layer_norm(self.w.size(), Some(&self.w), Some(&self.b), eps, false)
    }
}
