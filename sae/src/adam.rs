//! Adam with bias correction, over tensors the learner owns (the learners compute their own
//! gradients, so there is no autograd graph to hang an optimizer on).

use saescope_kernels::{AdamScalars, adam_step_};
use tch::Tensor;

/// Adam's state for a fixed list of parameters, in the order `new` was given them.
#[derive(Debug)]
pub struct Adam {
    /// First-moment decay: the gradients' running average (TrainConfig's `beta1`, 0.9).
    pub beta1: f64,
    /// Second-moment decay: the squared gradients' running average (`beta2`, 0.999).
    pub beta2: f64,
    /// Added to √v̂ in the update's denominator, against division by zero (`eps`, 1e-8).
    pub eps: f64,
    /// First and second moments, one pair per parameter.
    pub m: Vec<Tensor>,
    /// Second moments, one per parameter and of its shape.
    pub v: Vec<Tensor>,
    /// Steps taken.
    pub t: i64,
}

impl Adam {
    /// Zero moments shaped like `params`, whose order every `step` must keep; t = 0.
    pub fn new(params: &[&Tensor], beta1: f64, beta2: f64, eps: f64) -> Adam {
        Adam {
            beta1,
            beta2,
            eps,
            m: params.iter().map(|p| p.zeros_like()).collect(),
            v: params.iter().map(|p| p.zeros_like()).collect(),
            t: 0,
        }
    }

    /// One step of size `lr`: p ← p − lr · m̂ / (√v̂ + ε).
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &[Tensor], lr: f64) {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let scalars = AdamScalars {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            lr,
            bc1,
            bc2,
        };
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            // One pass over memory on the CPU; the same operations as tensor kernels elsewhere.
            if adam_step_(p, g, m, v, scalars) {
                continue;
            }
            let _ = m.g_mul_scalar_(self.beta1);
            let _ = m.g_add_(&(g * (1.0 - self.beta1)));
            let _ = v.g_mul_scalar_(self.beta2);
            let _ = v.addcmul_(&(g * (1.0 - self.beta2)), g);
            let denom = (&*v / bc2).sqrt() + self.eps;
            let _ = p.addcdiv_(&(&*m * (-lr / bc1)), &denom);
        }
    }
}

/// Scales the gradients so their joint L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> f64 {
    let total: f64 = grads
        .iter()
        .map(|g| {
            let g = g.view([-1]);
            g.dot(&g).double_value(&[]) // one pass, no squared copy
        })
        .sum::<f64>()
        .sqrt();
    if max_norm > 0.0 && total > max_norm {
        for g in grads.iter_mut() {
            let _ = g.g_mul_scalar_(max_norm / total);
        }
    }
    total
}
