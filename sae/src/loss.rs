//! The loss every gradient learner trains on, FVU = Σ‖x̂ − x‖² / Σ‖x − mean(x)‖², kept as
//! scalar tensors where the batch is.
//!
//! A learner's step reads nothing back to the host: on a GPU each read waits for every queued
//! kernel to finish, and the host then idles the GPU while it launches the next ones. The
//! trainer reads the figures only for a log line.

use tch::{Kind, Tensor};

/// A batch's FVU and the factor that turns its error into the FVU's gradient.
pub struct Fvu {
    /// Σ‖err‖² / Σ‖x − mean(x)‖², an f64 scalar tensor on the batch's device.
    pub value: Tensor,
    /// 2 / Σ‖x − mean(x)‖², a scalar tensor of err's kind: dFVU/dx̂ = err · `grad_scale`.
    pub grad_scale: Tensor,
}

impl Fvu {
    /// The FVU of a batch x [B, d] reconstructed with error `err` = x̂ − x (its sign does not
    /// matter to the value; the gradient is `err` · `grad_scale` for that sign).
    pub fn of(err: &Tensor, x: &Tensor) -> Fvu {
        let total_var = centred_sq_sum(x);
        Fvu {
            value: sq_sum(err) / &total_var,
            grad_scale: grad_scale(&total_var, 2.0, err.kind()),
        }
    }
}

/// Σ_b ‖x_b − mean(x)‖², the batch's total variance about its mean (FVU's denominator): summed
/// in x's kind, returned as an f64 scalar tensor.
pub fn centred_sq_sum(x: &Tensor) -> Tensor {
    let mean = x.mean_dim(0, true, x.kind());
    sq_sum(&(x - mean))
}

/// Σ t², summed in t's kind, as an f64 scalar tensor.
pub fn sq_sum(t: &Tensor) -> Tensor {
    t.square().sum(t.kind()).to_kind(Kind::Double)
}

/// `c / denom` for an f64 scalar tensor `denom`, in `kind` (that of what it scales): one f64
/// division, then rounded to `kind`, as a host scalar `c / denom` would be.
pub fn grad_scale(denom: &Tensor, c: f64, kind: Kind) -> Tensor {
    (denom.full_like(c) / denom).to_kind(kind)
}
