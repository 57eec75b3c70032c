//! What the analysis learns from the weights alone, before any activation: decoder neighbours,
//! logit effects through the unembedding, and (for `attn.hook_z`) each head's share of a
//! feature's decoder norm.

pub use saescope_sae::dictionary::head_share;
use tch::{Device, Kind, Tensor};

/// Per-feature data computed from the weights alone.
pub struct WeightFacts {
    /// Top `neighbours` by decoder cosine: (neighbour, cosine) per feature.
    pub neighbours: Vec<Vec<(u32, f32)>>,
    /// Direct logit effects, one per feature.
    pub logits: Vec<LogitEffect>,
    /// Each feature's share of decoder norm per head [n, heads], rows summing to 1; empty unless
    /// the hook is `attn.hook_z`.
    pub head_share: Vec<Vec<f32>>,
}

/// One feature's direct effect on every token's logit: its decoder direction, in the residual
/// stream, times the folded unembedding.
#[derive(Clone, Debug, Default)]
pub struct LogitEffect {
    /// The `k` tokens it raises most, as (token id, effect), largest first.
    pub top: Vec<(u32, f32)>,
    /// The `k` tokens it lowers most, as (token id, effect), most negative first.
    pub bottom: Vec<(u32, f32)>,
    /// Counts of the vocabulary's effects in equal-width bins over [min, max].
    pub hist: Vec<u32>,
    /// Smallest effect over the vocabulary: the histogram's lower edge.
    pub min: f32,
    /// Largest effect over the vocabulary: the histogram's upper edge.
    pub max: f32,
}

/// Decoder neighbours by cosine: the `k` most similar other atoms of each, in blocks of rows.
pub fn decoder_neighbours(atoms: &Tensor, k: usize) -> Vec<Vec<(u32, f32)>> {
    let _g = tch::no_grad_guard();
    let a = atoms.to_kind(Kind::Float);
    let a = &a / a.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12);
    let n = a.size()[0];
    let k = (k as i64).min(n - 1).max(0);
    let mut out = Vec::with_capacity(n as usize);
    let block = 1024;
    let mut start = 0;
    while start < n {
        let rows = block.min(n - start);
        let sims = a.narrow(0, start, rows).matmul(&a.tr());
        // Leave each atom out of its own list.
        let own = Tensor::arange_start(start, start + rows, (Kind::Int64, a.device()));
        let sims = sims.index_put(
            &[
                Some(Tensor::arange(rows, (Kind::Int64, a.device()))),
                Some(own),
            ],
            &Tensor::from(f32::NEG_INFINITY).to_device(a.device()),
            false,
        );
        let (v, i) = sims.topk(k, 1, true, true);
        let v = Vec::<f32>::try_from(v.reshape([-1]).to_device(Device::Cpu)).expect("f32");
        let i = Vec::<i64>::try_from(i.reshape([-1]).to_device(Device::Cpu)).expect("i64");
        for r in 0..rows as usize {
            let s = r * k as usize;
            out.push((s..s + k as usize).map(|j| (i[j] as u32, v[j])).collect());
        }
        start += rows;
    }
    out
}

/// Direct logit effect of each feature: its decoder direction written into the residual stream
/// (through `to_residual` [d_model, width] when given), times the folded unembedding
/// [vocab, d_model]. Top and bottom `k` tokens and a histogram over the vocabulary.
pub fn logit_effects(
    atoms: &Tensor,
    to_residual: Option<&Tensor>,
    unembed: &Tensor,
    k: usize,
    bins: usize,
) -> Vec<LogitEffect> {
    let _g = tch::no_grad_guard();
    let mut dirs = atoms.to_kind(Kind::Float);
    if let Some(w) = to_residual {
        dirs = dirs.matmul(&w.to_kind(Kind::Float).tr());
    }
    let u = unembed.to_kind(Kind::Float);
    let n = dirs.size()[0];
    let vocab = u.size()[0];
    let k = (k as i64).min(vocab);
    let mut out = Vec::with_capacity(n as usize);
    let block = 256;
    let mut start = 0;
    while start < n {
        let rows = block.min(n - start);
        let e = dirs.narrow(0, start, rows).matmul(&u.tr());
        let (tv, ti) = e.topk(k, 1, true, true);
        let (bv, bi) = e.topk(k, 1, false, true);
        let lo = e.amin(1, true);
        let hi = e.amax(1, true);
        let b = bins as f64;
        let idx = ((&e - &lo) / (&hi - &lo).clamp_min(1e-12) * b)
            .floor()
            .clamp(0.0, b - 1.0)
            .to_kind(Kind::Int64);
        let hist = Tensor::zeros([rows, bins as i64], (Kind::Int64, e.device())).scatter_add(
            1,
            &idx,
            &idx.ones_like(),
        );
        let cpu_f =
            |t: Tensor| Vec::<f32>::try_from(t.reshape([-1]).to_device(Device::Cpu)).expect("f32");
        let cpu_i =
            |t: Tensor| Vec::<i64>::try_from(t.reshape([-1]).to_device(Device::Cpu)).expect("i64");
        let (tv, ti, bv, bi) = (cpu_f(tv), cpu_i(ti), cpu_f(bv), cpu_i(bi));
        let (lo, hi, hist) = (cpu_f(lo), cpu_f(hi), cpu_i(hist));
        let k = k as usize;
        for r in 0..rows as usize {
            let pick = |v: &[f32], i: &[i64]| {
                (r * k..(r + 1) * k)
                    .map(|j| (i[j] as u32, v[j]))
                    .collect::<Vec<_>>()
            };
            out.push(LogitEffect {
                top: pick(&tv, &ti),
                bottom: pick(&bv, &bi),
                hist: hist[r * bins..(r + 1) * bins]
                    .iter()
                    .map(|&c| c as u32)
                    .collect(),
                min: lo[r],
                max: hi[r],
            });
        }
        start += rows;
    }
    out
}

/// Each feature's neuron alignment, as Neuronpedia shows it: the `k` largest entries of its
/// decoder direction by magnitude, as (input index, value, share of the direction's L1 norm).
pub fn neuron_alignment(atoms: &Tensor, k: usize) -> Vec<Vec<(u32, f32, f32)>> {
    let _g = tch::no_grad_guard();
    let atoms = atoms.to_kind(Kind::Float).to_device(Device::Cpu);
    let l1 = atoms
        .abs()
        .sum_dim_intlist(1, true, Kind::Float)
        .clamp_min(1e-12);
    let k = (k as i64).min(atoms.size()[1]);
    let (_, idx) = atoms.abs().topk(k, 1, true, true);
    let vals = atoms.gather(1, &idx, false);
    let share = vals.abs() / &l1;
    let idx = Vec::<Vec<i64>>::try_from(idx).expect("i64");
    let vals = Vec::<Vec<f32>>::try_from(vals).expect("f32");
    let share = Vec::<Vec<f32>>::try_from(share).expect("f32");
    (0..idx.len())
        .map(|f| {
            (0..k as usize)
                .map(|j| (idx[f][j] as u32, vals[f][j], share[f][j]))
                .collect()
        })
        .collect()
}
