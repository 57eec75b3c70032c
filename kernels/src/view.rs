//! Borrowing a tensor's memory as a slice, the element kinds the kernels read, and the dot
//! product they share.

use half::bf16;
use tch::{Device, Tensor};

/// Whether `x` is a contiguous CPU tensor the kernels may read in place.
pub(crate) fn on_cpu(x: &Tensor) -> bool {
    x.device() == Device::Cpu && x.is_contiguous() && !x.requires_grad()
}

/// The `n` elements from x's first on (none for n = 0: an empty tensor's data pointer is null).
///
/// # Safety
/// `n` elements of T's layout must lie in x's CPU storage from its first element on (all of a
/// contiguous tensor of `n` elements, or the span of a view), not written while the slice lives.
pub(crate) unsafe fn elements<T>(x: &Tensor, n: usize) -> &[T] {
    if n == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(x.data_ptr() as *const T, n) }
}

/// What an entry becomes when compared.
pub(crate) trait Value: Copy + Send + Sync {
    fn f32(self) -> f32;
}

impl Value for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Value for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16) // exact: bf16 is an f32's top half
    }
}

/// An element a kernel also writes: f32, or bf16 rounded as libtorch rounds.
pub(crate) trait Element: Value {
    fn from_f32(v: f32) -> Self;
}

impl Element for f32 {
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Element for bf16 {
    /// Round to nearest even, as libtorch (and `half`) round, written without branches:
    /// `half`'s conversion tests for NaN with a branch, which kept the SwiGLU kernel's loop in
    /// scalar code (1.43 ms against 1.04 for the SwiGLU of 2,048 SmolLM2 tokens). A NaN becomes
    /// libtorch's quiet NaN, 0x7fc0.
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        let bits = v.to_bits();
        let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
        bf16::from_bits(if v.is_nan() { 0x7fc0 } else { rounded as u16 })
    }
}

/// As [`elements`], to write.
///
/// # Safety
/// `x` must be a contiguous CPU tensor of `n` elements whose kind has T's layout, that nothing
/// else reads or writes while the slice lives.
#[allow(clippy::mut_from_ref)] // the tensor is a handle; its memory is what is borrowed
pub(crate) unsafe fn elements_mut<T>(x: &Tensor, n: usize) -> &mut [T] {
    if n == 0 {
        return &mut [];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts_mut(x.data_ptr() as *mut T, n) }
}

/// a · b, summed in 16 lanes (a fixed order, so the same on every run); compilers vectorise it
/// inside the kernels' target-feature functions.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (xs, ys) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (xr, yr) = (xs.remainder(), ys.remainder());
    for (x, y) in xs.zip(ys) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in xr.iter().zip(yr) {
        s += x * y;
    }
    s
}
