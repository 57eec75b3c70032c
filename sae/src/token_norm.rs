//! Per-token input normalisation, as SAELens' `normalize_activations` states it for a saved
//! dictionary: each token is normalised before encoding, and the reconstruction is put back in
//! that token's own scale (and offset) after decoding. Unlike a constant factor, neither can be
//! folded into the weights, so a dictionary that uses one is wrapped in
//! [`crate::dictionary::Normalized`].

use tch::{Kind, Tensor};

/// How each token is normalised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenNorm {
    /// As it is.
    #[default]
    None,
    /// Scaled to norm √d_in; the reconstruction is scaled back by the inverse.
    ConstantNormRescale,
    /// Centred and divided by its unbiased standard deviation (plus ε); the reconstruction is multiplied
    /// by that deviation and the mean added back.
    LayerNorm,
}

/// SAELens' ε in its `layer_norm` normalisation, added to the standard deviation.
const LAYER_NORM_EPS: f64 = 1e-5;

impl TokenNorm {
    /// The `cfg.json` value.
    pub fn name(self) -> &'static str {
        match self {
            TokenNorm::None => "none",
            TokenNorm::ConstantNormRescale => "constant_norm_rescale",
            TokenNorm::LayerNorm => "layer_norm",
        }
    }

    /// The normalised rows of x [B, d], and how to undo it on a reconstruction.
    pub fn apply(self, x: &Tensor) -> (Tensor, Restore) {
        match self {
            TokenNorm::None => (x.shallow_clone(), Restore::default()),
            TokenNorm::ConstantNormRescale => {
                let d = x.size()[1] as f64;
                let coeff = x.norm_scalaropt_dim(2.0, [1], true).reciprocal() * d.sqrt();
                let restore = Restore {
                    scale: Some(coeff.reciprocal()),
                    shift: None,
                };
                (x * coeff, restore)
            }
            TokenNorm::LayerNorm => {
                let mu = x.mean_dim(1, true, Kind::Float);
                let centred = x - &mu;
                // SAELens divides by the unbiased (n − 1) deviation.
                let std = centred.std_dim(1, true, true);
                let restore = Restore {
                    scale: Some(std.shallow_clone()),
                    shift: Some(mu),
                };
                (centred / (std + LAYER_NORM_EPS), restore)
            }
        }
    }
}

/// Puts a reconstruction back in its tokens' own scale and offset.
#[derive(Default)]
pub struct Restore {
    scale: Option<Tensor>,
    shift: Option<Tensor>,
}

impl Restore {
    /// y · scale + shift, row by row.
    pub fn undo(&self, y: Tensor) -> Tensor {
        let y = match &self.scale {
            Some(s) => y * s,
            None => y,
        };
        match &self.shift {
            Some(m) => y + m,
            None => y,
        }
    }
}
