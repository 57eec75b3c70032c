//! Reconstruction and sparsity metrics, shared by every method, accumulated over any number of
//! batches. Each figure's formula is named in the output so numbers compare with SAELens and
//! SAEBench: FVU is the summed squared error over the total variance about the mean of all
//! tokens seen (numerator and denominator accumulated separately), not the per-batch average.

use crate::sparse::SparseCodes;
pub use saescope_store::dictionary::Metrics;
use tch::{Kind, Tensor};

/// Running sums over tokens.
pub struct Accumulator {
    tokens: u64,
    sse: f64,
    sum_sq: f64,
    sum: Vec<f64>,
    legacy_ev: f64,
    l0: f64,
    l1: f64,
    cos: f64,
    l2_ratio: f64,
    recon_sq: f64,
    x_dot_recon: f64,
    fired: Vec<u64>,
    l0_hist: Vec<u64>,
}

/// Dead and dense fractions need this many evaluated tokens: a latent of density 1e-6 fires
/// about once in them.
pub const DEAD_MIN_TOKENS: u64 = 1_000_000;

const L0_BINS: usize = 257;

impl Accumulator {
    /// Empty sums for inputs of `d_in` values and `n_latents` latents.
    pub fn new(d_in: usize, n_latents: usize) -> Self {
        Accumulator {
            tokens: 0,
            sse: 0.0,
            sum_sq: 0.0,
            sum: vec![0.0; d_in],
            legacy_ev: 0.0,
            l0: 0.0,
            l1: 0.0,
            cos: 0.0,
            l2_ratio: 0.0,
            recon_sq: 0.0,
            x_dot_recon: 0.0,
            fired: vec![0; n_latents],
            l0_hist: vec![0; L0_BINS],
        }
    }

    /// Adds a batch: inputs x [B, d], reconstructions [B, d], and the codes.
    pub fn add(&mut self, x: &Tensor, recon: &Tensor, codes: &SparseCodes) {
        let f = |t: Tensor| t.to_kind(Kind::Double);
        let x = f(x.shallow_clone());
        let recon = f(recon.shallow_clone());
        let b = x.size()[0] as u64;
        let err = (&x - &recon)
            .square()
            .sum_dim_intlist(1, false, Kind::Double);
        self.sse += err.sum(Kind::Double).double_value(&[]);
        let x_sq = x.square().sum_dim_intlist(1, false, Kind::Double);
        self.sum_sq += x_sq.sum(Kind::Double).double_value(&[]);
        let s = Vec::<f64>::try_from(
            x.sum_dim_intlist(0, false, Kind::Double)
                .to_device(tch::Device::Cpu),
        )
        .expect("f64");
        for (a, v) in self.sum.iter_mut().zip(s) {
            *a += v;
        }
        let centred = (&x - x.mean_dim(0, true, Kind::Double))
            .square()
            .sum_dim_intlist(1, false, Kind::Double)
            .clamp_min(1e-12);
        self.legacy_ev += (-(&err / centred) + 1.0)
            .sum(Kind::Double)
            .double_value(&[]);
        let xn = x_sq.sqrt();
        let rn = recon
            .square()
            .sum_dim_intlist(1, false, Kind::Double)
            .sqrt();
        let dot = (&x * &recon).sum_dim_intlist(1, false, Kind::Double);
        self.cos += (&dot / (&xn * &rn).clamp_min(1e-12))
            .sum(Kind::Double)
            .double_value(&[]);
        // SAELens sets the denominator to 1 for near-zero inputs.
        let safe = xn.where_scalarother(&xn.ge(1e-4), 1.0);
        self.l2_ratio += (&rn / safe).sum(Kind::Double).double_value(&[]);
        self.recon_sq += rn.square().sum(Kind::Double).double_value(&[]);
        self.x_dot_recon += dot.sum(Kind::Double).double_value(&[]);
        let active = codes.vals.ne(0.0);
        let l0 = Vec::<i64>::try_from(
            Tensor::zeros([b as i64], (Kind::Int64, x.device()))
                .index_add(0, &codes.row_ids(), &active.to_kind(Kind::Int64))
                .to_device(tch::Device::Cpu),
        )
        .expect("i64");
        for v in l0 {
            self.l0 += v as f64;
            self.l0_hist[(v as usize).min(L0_BINS - 1)] += 1;
        }
        self.l1 += codes.vals.abs().sum(Kind::Double).double_value(&[]);
        let counts = Vec::<i64>::try_from(
            Tensor::zeros([self.fired.len() as i64], (Kind::Int64, x.device()))
                .index_add(0, &codes.cols, &active.to_kind(Kind::Int64))
                .to_device(tch::Device::Cpu),
        )
        .expect("i64");
        for (a, c) in self.fired.iter_mut().zip(counts) {
            *a += c as u64;
        }
        self.tokens += b;
    }

    /// The metrics of everything added.
    pub fn finish(&self) -> Metrics {
        let n = self.tokens.max(1) as f64;
        let mean_sq: f64 = self.sum.iter().map(|s| (s / n) * (s / n)).sum();
        let total_var = self.sum_sq - n * mean_sq;
        let fvu = self.sse / total_var.max(1e-30);
        let density: Vec<f64> = self.fired.iter().map(|&c| c as f64 / n).collect();
        let nf = density.len().max(1) as f64;
        let mut hist = vec![0u64; 20];
        for d in &density {
            let bin = (((d + 1e-10).log10() + 10.0) / 0.5)
                .floor()
                .clamp(0.0, 19.0) as usize;
            hist[bin] += 1;
        }
        let mut l0_hist = self.l0_hist.clone();
        while l0_hist.len() > 1 && l0_hist.last() == Some(&0) {
            l0_hist.pop();
        }
        let mut warnings = Vec::new();
        if self.tokens < DEAD_MIN_TOKENS {
            warnings.push(format!(
                "dead and dense fractions come from {} held-out tokens; {DEAD_MIN_TOKENS} or more are needed before a latent that never fired can be called dead",
                self.tokens
            ));
        }
        Metrics {
            tokens: self.tokens,
            fvu,
            explained_variance: 1.0 - fvu,
            explained_variance_legacy: self.legacy_ev / n,
            mse: self.sse / n,
            l0: self.l0 / n,
            l1: self.l1 / n,
            cos_sim: self.cos / n,
            l2_ratio: self.l2_ratio / n,
            relative_reconstruction_bias: self.recon_sq / self.x_dot_recon,
            dead_fraction: density.iter().filter(|&&d| d == 0.0).count() as f64 / nf,
            dense_fraction: density.iter().filter(|&&d| d > 0.1).count() as f64 / nf,
            freq_over_1_percent: density.iter().filter(|&&d| d > 0.01).count() as f64 / nf,
            log10_density_histogram: hist,
            l0_histogram: l0_hist,
            formulas: serde_json::json!({
                "fvu": "sum_tokens ||x - x_hat||^2 / (sum_tokens ||x||^2 - N ||mean(x)||^2), accumulated over all tokens",
                "explained_variance": "1 - fvu",
                "explained_variance_legacy": "mean_tokens (1 - ||x - x_hat||^2 / ||x - batch_mean(x)||^2) (SAEBench paper numbers)",
                "mse": "mean_tokens sum_dims (x - x_hat)^2",
                "l0": "mean_tokens #{i: f_i != 0}",
                "l1": "mean_tokens sum_i |f_i|",
                "cos_sim": "mean_tokens cos(x, x_hat)",
                "l2_ratio": "mean_tokens ||x_hat|| / ||x|| (denominator 1 when ||x|| < 1e-4)",
                "relative_reconstruction_bias": "E||x_hat||^2 / E[x . x_hat]",
                "dead_fraction": "fraction of latents with density 0 over the evaluated tokens",
                "dense_fraction": "fraction of latents with density > 0.1",
                "freq_over_1_percent": "fraction of latents with density > 0.01",
                "log10_density_histogram": "log10(density + 1e-10), 20 bins of 0.5 from -10 to 0",
            }),
            warnings,
        }
    }
}
