//! Random tensors drawn from a ChaCha stream on the CPU, not from libtorch's generator.
//!
//! libtorch has one global generator per device: another thread drawing from it (a test
//! running beside a training, a second training in the same process) changes what a seed
//! gives, and CPU and CUDA give different numbers for the same seed. Initialising from our own
//! stream makes a seed mean the same weights everywhere, which exact resume relies on.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

/// A seeded source of initial tensors; each draw continues the same stream.
pub struct Seeded(ChaCha8Rng);

impl Seeded {
    /// A stream from `seed`: the same seed gives the same draws on every device and thread.
    pub fn new(seed: u64) -> Self {
        Seeded(ChaCha8Rng::seed_from_u64(seed))
    }

    fn tensor(values: Vec<f32>, shape: &[i64], device: Device) -> Tensor {
        Tensor::from_slice(&values).reshape(shape).to_device(device)
    }

    /// Uniform on [lo, hi), f32.
    pub fn uniform(&mut self, shape: &[i64], lo: f64, hi: f64, device: Device) -> Tensor {
        let n = shape.iter().product::<i64>() as usize;
        let v = (0..n)
            .map(|_| (lo + (hi - lo) * self.0.random::<f64>()) as f32)
            .collect();
        Self::tensor(v, shape, device)
    }

    /// Standard normal, f32 (Box–Muller).
    pub fn normal(&mut self, shape: &[i64], device: Device) -> Tensor {
        let n = shape.iter().product::<i64>() as usize;
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let u1 = 1.0 - self.0.random::<f64>(); // (0, 1]: the log stays finite
            let u2 = self.0.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let a = std::f64::consts::TAU * u2;
            v.push((r * a.cos()) as f32);
            v.push((r * a.sin()) as f32);
        }
        v.truncate(n);
        Self::tensor(v, shape, device)
    }

    /// A uniformly random permutation of 0..n, i64.
    pub fn permutation(&mut self, n: usize, device: Device) -> Tensor {
        use rand::seq::SliceRandom;
        let mut p: Vec<i64> = (0..n as i64).collect();
        p.shuffle(&mut self.0);
        Tensor::from_slice(&p).to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn same_seed_same_draws_and_sane_moments() {
        let a = Seeded::new(5).normal(&[100_000], Device::Cpu);
        let b = Seeded::new(5).normal(&[100_000], Device::Cpu);
        assert!(a.equal(&b));
        let mean = a.mean(Kind::Double).double_value(&[]);
        let var = a.var(true).double_value(&[]);
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
        let u = Seeded::new(6).uniform(&[100_000], -2.0, 2.0, Device::Cpu);
        assert!(u.min().double_value(&[]) >= -2.0 && u.max().double_value(&[]) < 2.0);
        assert!(u.mean(Kind::Double).double_value(&[]).abs() < 0.03);
        let mut p = Vec::<i64>::try_from(Seeded::new(7).permutation(1000, Device::Cpu)).unwrap();
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }
}
