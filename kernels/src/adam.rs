//! Adam's update in one pass over memory.
//!
//! Written as libtorch operations, one Adam step on a parameter runs eleven kernels, each
//! reading or writing whole tensors the size of the parameter: for a 16k x 576 dictionary that
//! is about 0.9 GB of traffic a step, about a third of a TopK training step on the 2-core
//! development machine. Here each element is read and written once, with the same f32
//! operations in the same order as those kernels: the moments come out bit for bit theirs, the
//! parameters too but for a rare element a unit or two in the last place apart (the tests
//! count them).

use crate::pool::{has_fma, run_shares, threads};
use tch::{Device, Kind, Tensor};

/// One step's constants, as Adam computes them (f64; cast to f32 as libtorch casts scalars).
#[derive(Clone, Copy, Debug)]
pub struct AdamScalars {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to √v̂.
    pub eps: f64,
    /// Step size.
    pub lr: f64,
    /// 1 − β₁ᵗ.
    pub bc1: f64,
    /// 1 − β₂ᵗ.
    pub bc2: f64,
}

/// Updates p, m and v in place from the gradient g:
///   m ← m·β₁ + g·(1 − β₁);  v ← v·β₂ + g·(1 − β₂)·g;  p ← p + m·(−lr/bc1) / (√(v / bc2) + ε).
/// Takes contiguous f32 CPU tensors of one size, none requiring a gradient and none sharing
/// storage with another; returns false, having done nothing, for anything else (the caller then
/// runs the same step as tensor operations).
pub fn adam_step_(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    s: AdamScalars,
) -> bool {
    let all = [&*p, g, &*m, &*v];
    let n = p.numel();
    let fits = all.iter().all(|t| {
        t.device() == Device::Cpu
            && t.kind() == Kind::Float
            && t.is_contiguous()
            && !t.requires_grad()
            && t.numel() == n
    });
    let ptrs: Vec<usize> = all.iter().map(|t| t.data_ptr() as usize).collect();
    let distinct = (0..4).all(|i| (i + 1..4).all(|j| ptrs[i] != ptrs[j]));
    if !fits || !distinct || n == 0 {
        return false;
    }
    // SAFETY: four contiguous f32 CPU tensors of n elements each, at distinct addresses (tensors
    // of one size that do not start together do not overlap unless one is a view into another,
    // which Adam's own moments and the learners' parameters and fresh gradients never are); p,
    // m and v are borrowed mutably for the call, so nothing else writes them meanwhile.
    let (p, g, m, v) = unsafe {
        (
            std::slice::from_raw_parts_mut(ptrs[0] as *mut f32, n),
            std::slice::from_raw_parts(ptrs[1] as *const f32, n),
            std::slice::from_raw_parts_mut(ptrs[2] as *mut f32, n),
            std::slice::from_raw_parts_mut(ptrs[3] as *mut f32, n),
        )
    };
    let c = Constants::new(s);
    let share = n.div_ceil(threads() * 4).max(4096);
    let shares = p
        .chunks_mut(share)
        .zip(g.chunks(share))
        .zip(m.chunks_mut(share).zip(v.chunks_mut(share)));
    run_shares(shares, |((p, g), (m, v))| update(p, g, m, v, &c));
    true
}

/// The scalars as the f32 values libtorch's kernels use.
struct Constants {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bc2: f32,
    eps: f32,
    step: f32,
}

impl Constants {
    fn new(s: AdamScalars) -> Self {
        Constants {
            beta1: s.beta1 as f32,
            one_minus_beta1: (1.0 - s.beta1) as f32,
            beta2: s.beta2 as f32,
            one_minus_beta2: (1.0 - s.beta2) as f32,
            bc2: s.bc2 as f32,
            eps: s.eps as f32,
            step: (-s.lr / s.bc1) as f32,
        }
    }
}

/// One share of the elements, vectorised with FMA where the CPU has it (the second moment's
/// update is a fused multiply-add in libtorch's kernel too).
fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &Constants) {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: `has_fma` found AVX2 and FMA on this CPU.
        return unsafe { update_fma(p, g, m, v, c) };
    }
    update_elements(p, g, m, v, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_fma(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &Constants) {
    update_elements(p, g, m, v, c);
}

/// Each line is one of the tensor operations it replaces.
#[inline(always)]
fn update_elements(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &Constants) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m *= c.beta1; // m.mul_(β₁)
        *m += g * c.one_minus_beta1; // m.add_(g · (1 − β₁))
        *v *= c.beta2; // v.mul_(β₂)
        *v = (g * c.one_minus_beta2).mul_add(g, *v); // v.addcmul_(g · (1 − β₂), g)
        let denom = (*v / c.bc2).sqrt() + c.eps; // (v / bc2).sqrt() + ε
        *p += (*m * c.step) / denom; // p.addcdiv_(m · (−lr / bc1), denom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensor operations the kernel replaces, as saescope's Adam ran them.
    fn reference(p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, s: AdamScalars) {
        let _ = m.g_mul_scalar_(s.beta1);
        let _ = m.g_add_(&(g * (1.0 - s.beta1)));
        let _ = v.g_mul_scalar_(s.beta2);
        let _ = v.addcmul_(&(g * (1.0 - s.beta2)), g);
        let denom = (&*v / s.bc2).sqrt() + s.eps;
        let _ = p.addcdiv_(&(&*m * (-s.lr / s.bc1)), &denom);
    }

    /// m and v equal libtorch's bit for bit; p may differ by a unit or two in the last place in
    /// a few elements in 10⁴ (1 to 7 in 3·10⁵ seen at the second step, varying from run to run
    /// with libtorch's threads, more as those elements drift apart).
    #[test]
    fn equals_the_tensor_operations() {
        tch::manual_seed(3);
        let o = (Kind::Float, Device::Cpu);
        // Sizes with tails past any vector width and shares of uneven length.
        for n in [1i64, 17, 4099, 300_007] {
            let p0 = Tensor::randn([n], o);
            let (mut p, mut m, mut v) = (p0.copy(), Tensor::zeros([n], o), Tensor::zeros([n], o));
            let (mut pr, mut mr, mut vr) = (p0.copy(), m.copy(), v.copy());
            for t in 1..=5 {
                let g = Tensor::randn([n], o) * 10f64.powi(t - 3);
                let s = AdamScalars {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    lr: 3e-4,
                    bc1: 1.0 - 0.9f64.powi(t),
                    bc2: 1.0 - 0.999f64.powi(t),
                };
                assert!(adam_step_(&mut p, &g, &mut m, &mut v, s));
                reference(&mut pr, &g, &mut mr, &mut vr, s);
                for (own, theirs, what) in [(&m, &mr, "m"), (&v, &vr, "v")] {
                    let same = own
                        .view_dtype(Kind::Int)
                        .equal(&theirs.view_dtype(Kind::Int));
                    assert!(same, "{what}, n {n}, step {t}: not bit for bit");
                }
                // p: a unit or two in the last place of the larger of p and its update, in few
                // elements.
                let scale = pr.abs() + 3e-4;
                let far = (&p - &pr).abs().gt_tensor(&(scale * 2.5e-7));
                let differ = p.ne_tensor(&pr).sum(Kind::Int64).int64_value(&[]);
                assert!(
                    far.sum(Kind::Int64).int64_value(&[]) == 0 && differ * 10_000 <= n.max(10_000),
                    "p, n {n}, step {t}: {differ} differ"
                );
            }
            assert!(
                (&p - &p0).abs().max().double_value(&[]) > 0.0,
                "the step moved p"
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let o = (Kind::Float, Device::Cpu);
        let s = AdamScalars {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            lr: 1e-3,
            bc1: 0.1,
            bc2: 0.001,
        };
        let (mut p, g, mut m, mut v) = (
            Tensor::ones([8], o),
            Tensor::ones([8], o),
            Tensor::zeros([8], o),
            Tensor::zeros([8], o),
        );
        let mut wide = Tensor::ones([4, 4], o).tr(); // not contiguous
        assert!(!adam_step_(
            &mut wide,
            &Tensor::ones([4, 4], o),
            &mut Tensor::zeros([4, 4], o),
            &mut Tensor::zeros([4, 4], o),
            s
        ));
        let mut half = Tensor::ones([8], (Kind::BFloat16, Device::Cpu));
        assert!(!adam_step_(&mut half, &g, &mut m, &mut v, s));
        let mut same = m.shallow_clone();
        assert!(
            !adam_step_(&mut p, &g, &mut m, &mut same, s),
            "m and v share storage"
        );
        assert_eq!(p.double_value(&[0]), 1.0, "nothing was done");
    }
}
