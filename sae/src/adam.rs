//! Adam with bias correction, over tensors the learner owns (the learners compute their own
//! gradients, so there is no autograd graph to hang an optimizer on).

use saescope_kernels::{AdamScalars, adam_step_};
use tch::{Device, Kind, Tensor};

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
            // Elsewhere (a GPU), as tensor kernels, each a pass over the whole parameter, so in
            // place where libtorch allows: m ← m + (1 − β₁)(g − m), v ← v + (1 − β₂)(g² − v),
            // and p ← p + m / d with d = −(bc1 / lr)(√v / √bc2 + ε), the update with its
            // scalars folded into d.
            let _ = m.lerp_(g, 1.0 - self.beta1);
            let work = g.square();
            let _ = v.lerp_(&work, 1.0 - self.beta2);
            // p stays for a step too small to move it: folding 1 / lr into d would overflow f32
            // and make 0 · ∞ where v is 0.
            if lr.abs() < 1e-30 {
                continue;
            }
            // d is made in g²'s buffer: no allocation.
            let mut denom = v.sqrt_out(&work);
            let _ = denom.g_mul_scalar_(-bc1 / (lr * bc2.sqrt()));
            let _ = denom.g_add_scalar_(-bc1 * self.eps / lr);
            let _ = p.addcdiv_(m, &denom);
        }
    }
}

/// Scales the gradients so their joint L2 norm is at most `max_norm` (0: no limit); returns the
/// norm before, an f64 scalar tensor where the gradients are.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Tensor {
    // One pass each, no squared copy: each square summed where it is.
    let squares: Vec<Tensor> = grads
        .iter()
        .map(|g| {
            let g = g.view([-1]);
            g.dot(&g).to_kind(Kind::Double)
        })
        .collect();
    let total = match squares.as_slice() {
        [] => return Tensor::zeros([], (Kind::Double, Device::Cpu)),
        _ => Tensor::stack(&squares, 0).sum(Kind::Double).sqrt(),
    };
    // Read for free on the CPU, where a gradient within the limit is then left untouched; not
    // read on a GPU, where a read waits for the queue to drain.
    let read = total.device() == Device::Cpu;
    scale_within(grads, &total, max_norm, read);
    total
}

/// Scales `grads`, whose joint norm is `total`, by min(1, max_norm / total). With `read`, by a
/// factor read to the host and only when it is below 1; else by a factor left on the device,
/// which is exactly 1 (the gradients unchanged) within the limit.
fn scale_within(grads: &mut [Tensor], total: &Tensor, max_norm: f64, read: bool) {
    if max_norm <= 0.0 {
        return;
    }
    if read {
        let norm = total.double_value(&[]);
        if norm > max_norm {
            for g in grads.iter_mut() {
                let _ = g.g_mul_scalar_(max_norm / norm);
            }
        }
        return;
    }
    // max_norm / total as one division, rounded as the host's.
    let factor = (total.full_like(max_norm) / total)
        .clamp_max(1.0)
        .to_kind(Kind::Float);
    for g in grads.iter_mut() {
        let _ = g.g_mul_(&factor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The step as tensor operations (what runs on a GPU; f64 parameters take it on the CPU)
    /// lands where the CPU kernel's f32 step lands, clipping scales to the asked norm, and a step
    /// of size 0 changes nothing.
    #[test]
    fn the_tensor_step_matches_the_kernel_and_clipping_scales_to_the_norm() {
        tch::manual_seed(5);
        let shapes: [&[i64]; 2] = [&[64, 24], &[24]];
        let p0: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
            .collect();
        let mut own: Vec<Tensor> = p0.iter().map(Tensor::copy).collect();
        let mut wide: Vec<Tensor> = p0.iter().map(|p| p.to_kind(Kind::Double)).collect();
        let mut a = Adam::new(&own.iter().collect::<Vec<_>>(), 0.9, 0.999, 1e-8);
        let mut b = Adam::new(&wide.iter().collect::<Vec<_>>(), 0.9, 0.999, 1e-8);
        for t in 0..6 {
            let g: Vec<Tensor> = p0
                .iter()
                .map(|p| p.randn_like() * 10f64.powi(t - 3))
                .collect();
            let gw: Vec<Tensor> = g.iter().map(|g| g.to_kind(Kind::Double)).collect();
            a.step(&mut own.iter_mut().collect::<Vec<_>>(), &g, 1e-2);
            b.step(&mut wide.iter_mut().collect::<Vec<_>>(), &gw, 1e-2);
        }
        for ((x, y), p) in own.iter().zip(&wide).zip(&p0) {
            let moved = (x - p).abs().max().double_value(&[]);
            let apart = (x.to_kind(Kind::Double) - y).abs().max().double_value(&[]);
            assert!(moved > 1e-2, "the steps moved the parameter ({moved})");
            assert!(apart < 1e-5, "kernel and tensor steps {apart} apart");
        }

        let mut grads = vec![
            Tensor::from_slice(&[3.0f32, 0.0]),
            Tensor::from_slice(&[0.0f32, 4.0]),
        ];
        let norm = |g: &mut [Tensor], max: f64| clip_grad_norm(g, max).double_value(&[]);
        assert_eq!(norm(&mut grads, 1.0), 5.0);
        let after = norm(&mut grads, 10.0);
        assert!((after - 1.0).abs() < 1e-6, "{after}");
        assert_eq!(norm(&mut [], 1.0), 0.0);
        // The GPU's way (the factor left on the device) scales exactly as the CPU's, over the
        // limit and within it.
        for max in [0.5, 3.0, 50.0] {
            let mut by_read: Vec<Tensor> = p0.iter().map(Tensor::copy).collect();
            let mut on_device: Vec<Tensor> = p0.iter().map(Tensor::copy).collect();
            let total = clip_grad_norm(&mut by_read, max);
            scale_within(&mut on_device, &total, max, false);
            for (a, b) in by_read.iter().zip(&on_device) {
                assert!(a.equal(b), "max norm {max}: the two ways differ");
            }
        }

        // A step of size 0 leaves the parameter as it was, zero moments included.
        let mut p = wide[0].copy();
        let mut fresh = Adam::new(&[&p], 0.9, 0.999, 1e-8);
        let zero = p.zeros_like();
        fresh.step(&mut [&mut p], &[zero], 0.0);
        assert!(p.equal(&wide[0]));
    }
}
