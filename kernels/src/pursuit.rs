//! Matching pursuit, token by token, for MP-SAE training and encoding.
//!
//! As tensor operations, each pursuit step walks every token's 16k correlations three times
//! (an argmax, a Gram-row update, the subtraction) and allocates as it goes: 32 steps of it took
//! about 3 s a batch on the 2-core development machine. Here each token runs all its steps while
//! its correlations stay in the core's cache, the update and the next argmax in one pass, and
//! the backward walks the steps again from the final residual instead of storing one residual a
//! step.

use crate::pool::{has_avx512, has_fma, run_shares, threads};
use crate::view::{Value, dot, elements, elements_mut, on_cpu};
use half::bf16;
use tch::{Kind, Tensor};

/// A batch's pursuit: each token's atom and coefficient at each step, and the residual left.
#[derive(Debug)]
pub struct Pursued {
    /// Atom picked per token and step, i64 [B, T].
    pub picks: Tensor,
    /// Coefficient per token and step, f32 [B, T]: 0 where the projection was not positive.
    pub coefs: Tensor,
    /// The residual after the last step, f32 [B, d].
    pub residual: Tensor,
}

/// T steps of matching pursuit from residuals r [B, d] (f32) and their correlations c = r Dᵀ
/// [B, n] (f32 or bf16), over unit atoms D [n, d] (f32) with Gram matrix G = D Dᵀ [n, n] (f32
/// or bf16):
///
///   j = argmax c (the first among equals),  α = max(0, D\[j\] · r),  r ← r − α D\[j\],
///   c ← c − α G\[j\]
///
/// The correlations only choose; each coefficient is the exact f32 projection. `None` unless
/// the tensors are contiguous CPU tensors of those kinds and shapes and T ≥ 1.
pub fn pursue(
    r: &Tensor,
    c: &Tensor,
    atoms: &Tensor,
    gram: &Tensor,
    steps: usize,
) -> Option<Pursued> {
    let (b, d) = r.size2().ok()?;
    let (n, atom_d) = atoms.size2().ok()?;
    let fits = [r, c, atoms, gram].into_iter().all(on_cpu)
        && r.kind() == Kind::Float
        && atoms.kind() == Kind::Float
        && c.size() == [b, n]
        && gram.size() == [n, n]
        && atom_d == d
        && b > 0
        && d > 0
        && n > 0
        && steps > 0;
    if !fits {
        return None;
    }
    let (b, d, n) = (b as usize, d as usize, n as usize);
    let residual = r.copy();
    let mut picks = vec![0i64; b * steps];
    let mut coefs = vec![0f32; b * steps];
    let out = Out {
        // SAFETY: a fresh contiguous f32 copy of r [B, d], written only through this slice.
        residual: unsafe { elements_mut::<f32>(&residual, b * d) },
        picks: &mut picks,
        coefs: &mut coefs,
    };
    // SAFETY: contiguous f32 CPU tensors of these sizes (checked above), borrowed for the
    // call and not written meanwhile.
    let atoms = unsafe { elements::<f32>(atoms, n * d) };
    // SAFETY: for each pair of kinds, contiguous CPU tensors of these sizes and kinds (checked
    // above), borrowed and not written meanwhile; half's bf16 has the layout of BFloat16.
    unsafe {
        match (c.kind(), gram.kind()) {
            (Kind::Float, Kind::Float) => {
                run::<f32, f32>(elements(c, b * n), elements(gram, n * n), atoms, out, steps)
            }
            (Kind::Float, Kind::BFloat16) => {
                run::<f32, bf16>(elements(c, b * n), elements(gram, n * n), atoms, out, steps)
            }
            (Kind::BFloat16, Kind::Float) => {
                run::<bf16, f32>(elements(c, b * n), elements(gram, n * n), atoms, out, steps)
            }
            (Kind::BFloat16, Kind::BFloat16) => {
                run::<bf16, bf16>(elements(c, b * n), elements(gram, n * n), atoms, out, steps)
            }
            _ => return None,
        }
    }
    let shape = [b as i64, steps as i64];
    Some(Pursued {
        picks: Tensor::from_slice(&picks).view(shape),
        coefs: Tensor::from_slice(&coefs).view(shape),
        residual,
    })
}

/// Where a pursuit writes: the residuals (holding r⁰ on entry), and each step's pick and
/// coefficient.
struct Out<'a> {
    residual: &'a mut [f32],
    picks: &'a mut [i64],
    coefs: &'a mut [f32],
}

/// Every token's pursuit, tokens shared out among the threads.
fn run<C: Value, G: Value>(c: &[C], gram: &[G], atoms: &[f32], out: Out, steps: usize) {
    let n = gram.len().isqrt();
    let d = atoms.len() / n;
    let rows = c.len() / n;
    let share = rows.div_ceil(threads() * 4).max(1);
    let shares = c.chunks(share * n).zip(
        out.residual
            .chunks_mut(share * d)
            .zip(out.picks.chunks_mut(share * steps))
            .zip(out.coefs.chunks_mut(share * steps)),
    );
    let (wide, fma) = (has_avx512(), has_fma());
    run_shares(shares, |(c, ((residual, picks), coefs))| {
        let mut corr = vec![0f32; n];
        let tokens = c.chunks_exact(n).zip(residual.chunks_exact_mut(d)).zip(
            picks
                .chunks_exact_mut(steps)
                .zip(coefs.chunks_exact_mut(steps)),
        );
        for ((c, r), (picks, coefs)) in tokens {
            let token = Token {
                gram,
                atoms,
                corr: &mut corr,
                r,
                picks,
                coefs,
            };
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: `has_avx512` found AVX-512F on this CPU.
                unsafe { pursue_avx512(c, token) };
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: `has_fma` found AVX2 (and FMA) on this CPU.
                unsafe { pursue_avx2(c, token) };
                continue;
            }
            let _ = (wide, fma);
            pursue_token(c, token, update_argmax);
        }
    });
}

/// One token's pursuit: what it reads and where it writes.
struct Token<'a, G> {
    gram: &'a [G],
    atoms: &'a [f32],
    /// The token's correlations, widened to f32 (a buffer reused from token to token).
    corr: &'a mut [f32],
    r: &'a mut [f32],
    picks: &'a mut [i64],
    coefs: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pursue_avx2<C: Value, G: Value>(c: &[C], token: Token<G>) {
    pursue_token(c, token, update_argmax);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pursue_avx512<C: Value, G: Value>(c: &[C], token: Token<G>) {
    // SAFETY: this function's callers found AVX-512F.
    pursue_token(c, token, |c, g, alpha| unsafe {
        x86::update_argmax(c, g, alpha)
    });
}

/// One token's pursuit, with `update` as the correlations' update and argmax.
#[inline(always)]
fn pursue_token<C: Value, G: Value>(
    c: &[C],
    t: Token<G>,
    update: impl Fn(&mut [f32], &[G], f32) -> usize,
) {
    let (n, d) = (t.corr.len(), t.r.len());
    for (x, &c) in t.corr.iter_mut().zip(c) {
        *x = c.f32();
    }
    // α = 0 leaves the correlations as they are: this is their first argmax.
    let mut j = update(t.corr, &t.gram[..n], 0.0);
    let steps = t.picks.len();
    for step in 0..steps {
        let atom = &t.atoms[j * d..(j + 1) * d];
        let exact = dot(atom, t.r);
        let alpha = exact.max(0.0);
        (t.picks[step], t.coefs[step]) = (j as i64, alpha);
        // α = 0 changes nothing: every later step picks the same atom and adds nothing.
        if alpha > 0.0 {
            for (x, &a) in t.r.iter_mut().zip(atom) {
                *x -= alpha * a;
            }
            if step + 1 < steps {
                // The picked atom's correlation is known exactly: with it, the update leaves
                // that entry at (about) 0. Correlations that started in bf16 would otherwise
                // keep its rounding error, which can exceed every other correlation when one
                // atom dominates a token, and pick the atom again for nothing.
                t.corr[j] = exact;
                j = update(t.corr, &t.gram[j * n..(j + 1) * n], alpha);
            }
        }
    }
}

/// c ← c − α g, and the index of the largest c after it (the first among equals). Sixteen
/// lanes each keep their best, so the loop is one vector pass.
#[inline(always)]
fn update_argmax<G: Value>(c: &mut [f32], g: &[G], alpha: f32) -> usize {
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut at = [0u32; LANES];
    let blocks = c.chunks_exact_mut(LANES).zip(g.chunks_exact(LANES));
    for (q, (c, g)) in blocks.enumerate() {
        for l in 0..LANES {
            let v = c[l] - alpha * g[l].f32();
            c[l] = v;
            let better = v > best[l];
            best[l] = if better { v } else { best[l] };
            at[l] = if better {
                (q * LANES + l) as u32
            } else {
                at[l]
            };
        }
    }
    reduce(c, g, alpha, &best, &at, c.len() / LANES * LANES)
}

/// The lanes' best merged (the first index among equal values), then the entries from `tail`
/// on, which no lane covered, updated and compared one by one.
#[inline(always)]
fn reduce<G: Value>(
    c: &mut [f32],
    g: &[G],
    alpha: f32,
    best: &[f32],
    at: &[u32],
    tail: usize,
) -> usize {
    let (mut top, mut arg) = (f32::NEG_INFINITY, 0usize);
    for (&v, &i) in best.iter().zip(at) {
        if v > top || (v == top && (i as usize) < arg) {
            (top, arg) = (v, i as usize);
        }
    }
    for i in tail..c.len() {
        c[i] -= alpha * g[i].f32();
        if c[i] > top {
            (top, arg) = (c[i], i);
        }
    }
    arg
}

/// Lanes of the vector loops: one AVX-512 register of f32, two of AVX2.
const LANES: usize = 16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::LANES;
    use crate::scan::load16;
    use crate::view::Value;
    use std::arch::x86_64::*;

    /// How far ahead in the Gram row to ask for memory, in entries (4 KB of bf16; 512 B to
    /// 8 KB were tried).
    const AHEAD: usize = 2048;

    /// [`super::update_argmax`] with the 16 lanes' best values and indices held in two
    /// registers: compilers keep arrays of them on the stack, which made the loop three times
    /// slower. The same operations in the same order, so the same result. The loop waits on the
    /// Gram row's memory, so it asks for it 4 KB ahead; that took 25% off. (Four sets of
    /// registers taking blocks in turn ran 25% slower, and pursuing tokens in lockstep so that
    /// the next token's row could be requested early, 10-25% slower.)
    ///
    /// # Safety
    /// The CPU must have AVX-512F; G is f32 or bf16; `g` is at least as long as `c`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn update_argmax<G: Value>(c: &mut [f32], g: &[G], alpha: f32) -> usize {
        let blocks = c.len() / LANES;
        let a = _mm512_set1_ps(alpha);
        let mut best = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut at = _mm512_setzero_si512();
        let mut index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let step = _mm512_set1_epi32(LANES as i32);
        let (cp, gp) = (c.as_mut_ptr(), g.as_ptr());
        for q in 0..blocks {
            let o = q * LANES;
            // A hint only: an address past the end of the row is never read.
            _mm_prefetch::<_MM_HINT_T0>(gp.wrapping_add(o + AHEAD) as *const i8);
            // SAFETY: o + 16 ≤ c.len() ≤ g.len(): both blocks are inside the slices.
            let v = unsafe {
                let v = _mm512_sub_ps(
                    _mm512_loadu_ps(cp.add(o)),
                    _mm512_mul_ps(a, load16(gp.add(o))),
                );
                _mm512_storeu_ps(cp.add(o), v);
                v
            };
            let better = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best);
            best = _mm512_mask_mov_ps(best, better, v);
            at = _mm512_mask_mov_epi32(at, better, index);
            index = _mm512_add_epi32(index, step);
        }
        let (mut vals, mut idx) = ([0f32; LANES], [0u32; LANES]);
        // SAFETY: 16 f32 and 16 u32 are 64 writable bytes each.
        unsafe {
            _mm512_storeu_ps(vals.as_mut_ptr(), best);
            _mm512_storeu_si512(idx.as_mut_ptr() as *mut __m512i, at);
        }
        super::reduce(c, g, alpha, &vals, &idx, blocks * LANES)
    }
}

/// The backward of [`pursue`] through its coefficients and residual updates (the picks carry
/// no gradient), for a loss whose gradient at the final residual is `grad` [B, d]. With
/// α = D\[j\] · r before each step (where positive) and r ← r − α D\[j\]:
///
///   ∂L/∂α = −D\[j\] · ∂L/∂r_after (0 where α = 0),
///   ∂L/∂D\[j\] = ∂L/∂α · r_before − α ∂L/∂r_after,   ∂L/∂r_before = ∂L/∂r_after + ∂L/∂α D\[j\]
///
/// Returns the gradient for the atoms, f32 [n, d] (each step's added into its atom's row), and
/// the gradient at the first residual [B, d]. Each step's residual is rebuilt from the next
/// (r_before = r_after + α D\[j\]) rather than stored. `None` unless the tensors are
/// contiguous f32 (picks i64) CPU tensors of matching shapes.
///
/// The tokens are split into at most [`MAX_PARTS`] contiguous ranges, each adding into an
/// [n, d] buffer of its own, and the buffers are summed in order: the ranges depend on the
/// shapes only, so the result is the same whatever the threads and their scheduling. Adding in
/// place saves writing each step's gradient row (B·T·d, eight times the atoms at 4,096 tokens
/// x 32 steps over 16,384 atoms) and reading it back; the buffers never outgrow those rows.
pub fn pursue_backward(
    atoms: &Tensor,
    picks: &Tensor,
    coefs: &Tensor,
    residual: &Tensor,
    grad: &Tensor,
) -> Option<(Tensor, Tensor)> {
    let (n, d) = atoms.size2().ok()?;
    let (b, steps) = picks.size2().ok()?;
    let fits = [atoms, picks, coefs, residual, grad]
        .into_iter()
        .all(on_cpu)
        && [atoms, coefs, residual, grad]
            .iter()
            .all(|t| t.kind() == Kind::Float)
        && picks.kind() == Kind::Int64
        && coefs.size() == [b, steps]
        && residual.size() == [b, d]
        && grad.size() == [b, d]
        && b > 0
        && d > 0
        && steps > 0;
    if !fits {
        return None;
    }
    let (n, d, b, steps) = (n as usize, d as usize, b as usize, steps as usize);
    let picked = Vec::<i64>::try_from(picks.view([-1])).ok()?;
    if picked.iter().any(|&j| !(0..n as i64).contains(&j)) {
        return None;
    }
    // Ranges fixed by the shapes, not by the thread count: the sums, and so the result, are
    // the same on every machine.
    let rows = b.div_ceil((b * steps / n).clamp(1, MAX_PARTS).min(b));
    let parts = b.div_ceil(rows);
    let sums: Vec<Tensor> = (0..parts)
        .map(|_| Tensor::zeros([n as i64, d as i64], (Kind::Float, grad.device())))
        .collect();
    let first = grad.copy();
    // SAFETY: contiguous CPU tensors of these kinds and sizes (checked above): the inputs are
    // borrowed for the call and not written meanwhile; the outputs are fresh, distinct, and
    // written only through these slices.
    let (atoms, coefs, residual, first_s) = unsafe {
        (
            elements::<f32>(atoms, n * d),
            elements::<f32>(coefs, b * steps),
            elements::<f32>(residual, b * d),
            elements_mut::<f32>(&first, b * d),
        )
    };
    // SAFETY: as above, one fresh tensor per slice.
    let sums_s = sums
        .iter()
        .map(|t| unsafe { elements_mut::<f32>(t, n * d) });
    let shares = picked
        .chunks(rows * steps)
        .zip(coefs.chunks(rows * steps))
        .zip(residual.chunks(rows * d))
        .zip(first_s.chunks_mut(rows * d).zip(sums_s));
    let fma = has_fma();
    run_shares(shares, |(((picks, coefs), residual), (first, sum))| {
        let mut r = vec![0f32; d];
        let tokens = picks
            .chunks_exact(steps)
            .zip(coefs.chunks_exact(steps))
            .zip(residual.chunks_exact(d))
            .zip(first.chunks_exact_mut(d));
        for (((picks, coefs), res), g) in tokens {
            r.copy_from_slice(res);
            let token = Backward {
                atoms,
                picks,
                coefs,
                r: &mut r,
                g,
                sum,
            };
            #[cfg(target_arch = "x86_64")]
            if fma {
                // SAFETY: `has_fma` found AVX2 (and FMA) on this CPU.
                unsafe { backward_avx2(token) };
                continue;
            }
            let _ = fma;
            backward_token(token);
        }
    });
    let mut sums = sums.into_iter();
    let mut total = sums.next().expect("at least one part");
    for s in sums {
        total += s;
    }
    Some((total, first))
}

/// The most token ranges [`pursue_backward`] splits a batch into, one [n, d] buffer and one
/// thread each. Zeroing and summing the buffers is a pass over them all: on 2 cores the
/// backward with its sum took 63 ms in 2 ranges and 95 ms in 4 (4,096 tokens x 32 steps over
/// 16,384 atoms of 576; the rows they replace cost 172 ms, summed by one thread).
const MAX_PARTS: usize = 2;

/// One token's backward: its steps, its residual (final on entry, rebuilt step by step), its
/// gradient (at the final residual on entry, at the first on return) and the [n, d] buffer its
/// steps' atom gradients are added into.
struct Backward<'a> {
    atoms: &'a [f32],
    picks: &'a [i64],
    coefs: &'a [f32],
    r: &'a mut [f32],
    g: &'a mut [f32],
    sum: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_avx2(t: Backward) {
    backward_token(t);
}

#[inline(always)]
fn backward_token(t: Backward) {
    let d = t.r.len();
    for step in (0..t.picks.len()).rev() {
        let (j, alpha) = (t.picks[step] as usize, t.coefs[step]);
        // α = 0: the step changed nothing and passes no gradient.
        if alpha <= 0.0 {
            continue;
        }
        let atom = &t.atoms[j * d..(j + 1) * d];
        for (x, &a) in t.r.iter_mut().zip(atom) {
            *x += alpha * a; // r_before
        }
        let g_alpha = -dot(t.g, atom);
        let out = &mut t.sum[j * d..(j + 1) * d];
        for ((o, &x), &g) in out.iter_mut().zip(t.r.iter()).zip(t.g.iter()) {
            *o += g_alpha * x - alpha * g;
        }
        for (g, &a) in t.g.iter_mut().zip(atom) {
            *g += g_alpha * a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    const F: (Kind, Device) = (Kind::Float, Device::Cpu);

    fn unit_atoms(n: i64, d: i64) -> Tensor {
        let a = Tensor::randn([n, d], F);
        &a / a.norm_scalaropt_dim(2.0, [1], true)
    }

    /// Against a pursuit in f64 that recomputes every correlation from the residual (no Gram
    /// updates), for both kinds of correlations and Gram; and each gradient against autograd
    /// through the same picks.
    #[test]
    fn matches_a_direct_pursuit_and_autograd() {
        tch::manual_seed(21);
        let (b, n, d, steps) = (9, 53, 20, 6);
        let atoms = unit_atoms(n, d);
        let x = Tensor::randn([b, d], F);
        let gram = atoms.matmul(&atoms.copy().tr());
        let c = x.matmul(&atoms.tr());
        let p = pursue(&x, &c, &atoms, &gram, steps).expect("taken");

        let a64 = atoms.to_kind(Kind::Double);
        let mut r = x.to_kind(Kind::Double);
        for t in 0..steps {
            let j = r.matmul(&a64.tr()).argmax(1, false);
            let dj = a64.index_select(0, &j);
            let alpha = (&dj * &r)
                .sum_dim_intlist(1, true, Kind::Double)
                .clamp_min(0.0);
            r = &r - &alpha * &dj;
            assert!(p.picks.select(1, t as i64).equal(&j), "step {t}: picks");
            let err = (p.coefs.select(1, t as i64).to_kind(Kind::Double) - alpha.view([-1]))
                .abs()
                .max()
                .double_value(&[]);
            assert!(err < 1e-5, "step {t}: coefficients off by {err}");
        }
        let err = (p.residual.to_kind(Kind::Double) - &r)
            .abs()
            .max()
            .double_value(&[]);
        assert!(err < 1e-5, "residual off by {err}");

        // bf16 correlations and Gram choose nearly alike on this small case.
        let h = |t: &Tensor| t.to_kind(Kind::BFloat16);
        let q = pursue(&x, &h(&c), &atoms, &h(&gram), steps).expect("taken");
        let same = q
            .picks
            .eq_tensor(&p.picks)
            .to_kind(Kind::Float)
            .mean(Kind::Float);
        assert!(same.double_value(&[]) > 0.8);

        check_backward(&atoms, &x, &p);
    }

    /// Many tokens over few atoms: the tokens are split into two ranges, each adding into a
    /// buffer of its own, and the sum is still the gradient.
    #[test]
    fn the_backward_sums_each_threads_tokens() {
        tch::manual_seed(23);
        let (b, n, d, steps) = (64, 16, 8, 4);
        let atoms = unit_atoms(n, d);
        let x = Tensor::randn([b, d], F);
        let gram = atoms.matmul(&atoms.copy().tr());
        let p = pursue(&x, &x.matmul(&atoms.tr()), &atoms, &gram, steps).expect("taken");
        check_backward(&atoms, &x, &p);
    }

    /// The backward through `p`'s picks (from x) against autograd on L = Σ w ⊙ r^T.
    fn check_backward(atoms: &Tensor, x: &Tensor, p: &Pursued) {
        let (b, d) = x.size2().unwrap();
        let steps = p.picks.size()[1];
        let w = Tensor::randn([b, d], F);
        let (summed, first) =
            pursue_backward(atoms, &p.picks, &p.coefs, &p.residual, &w).expect("taken");
        let a = atoms.to_kind(Kind::Double).set_requires_grad(true);
        let r0 = x.to_kind(Kind::Double).set_requires_grad(true);
        let mut r = r0.shallow_clone();
        for t in 0..steps {
            let dj = a.index_select(0, &p.picks.select(1, t));
            let alpha = (&dj * &r).sum_dim_intlist(1, true, Kind::Double).relu();
            r = &r - alpha * dj; // not in place: r starts as the leaf r0
        }
        (r * w.to_kind(Kind::Double)).sum(Kind::Double).backward();
        let close = |got: &Tensor, want: &Tensor, what: &str| {
            let err = (got.to_kind(Kind::Double) - want)
                .abs()
                .max()
                .double_value(&[]);
            assert!(err < 1e-4, "{what} off by {err}");
        };
        close(&summed, &a.grad(), "atom gradients");
        close(&first, &r0.grad(), "residual gradient");
    }

    /// Equal correlations: the first atom among them; and a step whose projection is not
    /// positive adds nothing and leaves every later step the same.
    #[test]
    fn takes_the_first_of_equals_and_stops_on_a_negative_projection() {
        let atoms = Tensor::from_slice(&[0f32, 1., 1., 0., 1., 0.]).view([3, 2]);
        let gram = atoms.matmul(&atoms.copy().tr());
        let x = Tensor::from_slice(&[2f32, 0.]).view([1, 2]);
        let c = x.matmul(&atoms.tr());
        let p = pursue(&x, &c, &atoms, &gram, 3).expect("taken");
        // Atoms 1 and 2 tie at 2; then every correlation is 0 and atom 0 comes first.
        assert_eq!(Vec::<i64>::try_from(p.picks.view([-1])).unwrap(), [1, 0, 0]);
        assert_eq!(
            Vec::<f32>::try_from(p.coefs.view([-1])).unwrap(),
            [2., 0., 0.]
        );
        let x = Tensor::from_slice(&[-1f32, -1.]).view([1, 2]);
        let p = pursue(&x, &x.matmul(&atoms.tr()), &atoms, &gram, 2).expect("taken");
        assert_eq!(Vec::<f32>::try_from(p.coefs.view([-1])).unwrap(), [0., 0.]);
        assert!(p.residual.equal(&x));
    }

    /// The AVX-512 update against the portable one: the same correlations after it and the
    /// same first index of the largest, with ties planted and a tail past the last block.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_update_equals_the_portable_one() {
        if !has_avx512() {
            return;
        }
        tch::manual_seed(22);
        for n in [16, 100, 16387] {
            let c0 = (Tensor::randint(50, [n], F) / 8.0).to_kind(Kind::Float);
            let g = Tensor::randn([n], F).to_kind(Kind::BFloat16);
            let c0 = Vec::<f32>::try_from(&c0).unwrap();
            let g: Vec<bf16> = Vec::<f32>::try_from(g.to_kind(Kind::Float))
                .unwrap()
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            for alpha in [0.0f32, 0.5, 3.0] {
                let (mut a, mut b) = (c0.clone(), c0.clone());
                let i = update_argmax(&mut a, &g, alpha);
                // SAFETY: AVX-512F was found above.
                let j = unsafe { x86::update_argmax(&mut b, &g, alpha) };
                assert_eq!((i, &a), (j, &b), "n {n} alpha {alpha}");
                let top = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(i, a.iter().position(|&v| v == top).unwrap());
            }
        }
    }

    /// Correlations from a bf16 matmul: a dominant atom's rounding error (1002.1 rounds to
    /// 1004) must not outlast its pick and win the next step for nothing.
    #[test]
    fn a_dominant_atom_is_not_picked_again_from_bf16_rounding() {
        let atoms = Tensor::eye(16, F);
        let gram = atoms.to_kind(Kind::BFloat16);
        let x = Tensor::zeros([1, 16], F);
        for (i, v) in [(0, 1002.1f64), (1, 0.5), (2, 0.25)] {
            let _ = x.get(0).get(i).fill_(v);
        }
        let c = x.to_kind(Kind::BFloat16);
        assert_eq!(c.double_value(&[0, 0]), 1004.0);
        let p = pursue(&x, &c, &atoms, &gram, 3).expect("taken");
        assert_eq!(Vec::<i64>::try_from(p.picks.view([-1])).unwrap(), [0, 1, 2]);
        let coefs = Vec::<f32>::try_from(p.coefs.view([-1])).unwrap();
        assert!((coefs[0] - 1002.1).abs() < 1e-3 && coefs[1] == 0.5 && coefs[2] == 0.25);
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let atoms = unit_atoms(5, 3);
        let gram = atoms.matmul(&atoms.copy().tr());
        let x = Tensor::randn([2, 3], F);
        let c = x.matmul(&atoms.tr());
        assert!(pursue(&x, &c, &atoms, &gram, 0).is_none());
        assert!(pursue(&x, &c.tr(), &atoms, &gram, 1).is_none());
        assert!(pursue(&x.to_kind(Kind::Double), &c, &atoms, &gram, 1).is_none());
        assert!(pursue(&x, &c, &atoms, &gram.narrow(0, 0, 4), 1).is_none());
        let picks = Tensor::from_slice(&[0i64, 5]).view([2, 1]);
        let coefs = Tensor::ones([2, 1], F);
        assert!(pursue_backward(&atoms, &picks, &coefs, &x, &x).is_none());
    }
}
