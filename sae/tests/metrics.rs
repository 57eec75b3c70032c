//! Every reconstruction and sparsity figure against a plain computation on the same numbers:
//! loops over `f64` vectors, no libtorch, following each figure's stated formula.

use saescope_sae::SparseCodes;
use saescope_sae::metrics::Accumulator;
use tch::Tensor;

const N: usize = 300;
const D: usize = 8;
const LATENTS: usize = 12;
const BATCH: usize = 100;

/// A deterministic spread of values in [-1, 1).
fn wave(i: usize, j: usize) -> f64 {
    (((i * 7919 + j * 104_729) % 1000) as f64 / 500.0) - 1.0
}

struct Data {
    x: Vec<[f64; D]>,
    recon: Vec<[f64; D]>,
    codes: Vec<[f64; LATENTS]>,
}

/// Inputs with a nonzero mean, reconstructions that shrink and perturb them, one row whose norm
/// is below 1e-4 (l2_ratio's special case), and codes with a dead latent (0), a dense one (1),
/// one at 5% (2) and sparse others, some negative.
fn data() -> Data {
    let mut x = vec![[0.0; D]; N];
    let mut recon = vec![[0.0; D]; N];
    let mut codes = vec![[0.0; LATENTS]; N];
    for i in 0..N {
        for j in 0..D {
            x[i][j] = if i == 17 {
                1e-6 * (j as f64 + 1.0)
            } else {
                0.5 + wave(i, j) * (1.0 + j as f64 / 4.0)
            };
            recon[i][j] = 0.8 * x[i][j] + 0.1 * wave(i + 3, j + 5);
        }
        codes[i][1] = 0.25 + wave(i, 1).abs();
        if i % 20 == 0 {
            codes[i][2] = 1.5;
        }
        for (f, c) in codes[i].iter_mut().enumerate().skip(3) {
            if (i + f * 3) % (f + 2) == 0 {
                *c = wave(i, f);
            }
        }
    }
    Data { x, recon, codes }
}

fn tensor<const W: usize>(rows: &[[f64; W]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, W as i64])
}

/// What the accumulator sees: the same numbers rounded to f32.
fn as_f32<const W: usize>(rows: &[[f64; W]]) -> Vec<[f64; W]> {
    rows.iter().map(|r| r.map(|v| v as f32 as f64)).collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

fn close(name: &str, got: f64, want: f64) {
    let tol = 1e-9 * want.abs().max(1.0);
    assert!(
        (got - want).abs() <= tol,
        "{name}: {got} against a direct computation of {want}"
    );
}

#[test]
fn every_figure_matches_a_direct_computation() {
    let data = data();
    let mut acc = Accumulator::new(D, LATENTS);
    for start in (0..N).step_by(BATCH) {
        let r = start..start + BATCH;
        let codes = SparseCodes::from_dense(&tensor(&data.codes[r.clone()]));
        acc.add(
            &tensor(&data.x[r.clone()]),
            &tensor(&data.recon[r.clone()]),
            &codes,
        );
    }
    let m = acc.finish();
    let (x, recon, codes) = (as_f32(&data.x), as_f32(&data.recon), as_f32(&data.codes));
    let n = N as f64;

    let err: Vec<f64> = (0..N)
        .map(|i| (0..D).map(|j| (x[i][j] - recon[i][j]).powi(2)).sum())
        .collect();
    let sse: f64 = err.iter().sum();
    let mean: Vec<f64> = (0..D)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let total_var: f64 = x
        .iter()
        .map(|r| (0..D).map(|j| (r[j] - mean[j]).powi(2)).sum::<f64>())
        .sum();
    close("fvu", m.fvu, sse / total_var);
    close(
        "explained_variance",
        m.explained_variance,
        1.0 - sse / total_var,
    );
    close("mse", m.mse, sse / n);

    // Legacy explained variance: each token against the mean of its own batch.
    let mut legacy = 0.0;
    for start in (0..N).step_by(BATCH) {
        let rows = start..start + BATCH;
        let bmean: Vec<f64> = (0..D)
            .map(|j| rows.clone().map(|i| x[i][j]).sum::<f64>() / BATCH as f64)
            .collect();
        for i in rows {
            let c: f64 = (0..D).map(|j| (x[i][j] - bmean[j]).powi(2)).sum();
            legacy += 1.0 - err[i] / c.max(1e-12);
        }
    }
    close(
        "explained_variance_legacy",
        m.explained_variance_legacy,
        legacy / n,
    );

    let (mut cos, mut ratio, mut rsq, mut dot) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..N {
        let (xn, rn) = (norm(&x[i]), norm(&recon[i]));
        let d: f64 = (0..D).map(|j| x[i][j] * recon[i][j]).sum();
        cos += d / (xn * rn).max(1e-12);
        ratio += rn / if xn >= 1e-4 { xn } else { 1.0 };
        rsq += rn * rn;
        dot += d;
    }
    close("cos_sim", m.cos_sim, cos / n);
    close("l2_ratio", m.l2_ratio, ratio / n);
    close(
        "relative_reconstruction_bias",
        m.relative_reconstruction_bias,
        rsq / dot,
    );

    let l0: Vec<usize> = codes
        .iter()
        .map(|r| r.iter().filter(|&&v| v != 0.0).count())
        .collect();
    close("l0", m.l0, l0.iter().sum::<usize>() as f64 / n);
    let l1: f64 = codes.iter().flatten().map(|v| v.abs()).sum();
    close("l1", m.l1, l1 / n);
    let max_l0 = *l0.iter().max().unwrap();
    let l0_hist: Vec<u64> = (0..=max_l0)
        .map(|k| l0.iter().filter(|&&v| v == k).count() as u64)
        .collect();
    assert_eq!(m.l0_histogram, l0_hist, "l0_histogram");

    let density: Vec<f64> = (0..LATENTS)
        .map(|f| codes.iter().filter(|r| r[f] != 0.0).count() as f64 / n)
        .collect();
    assert_eq!(density[0], 0.0, "latent 0 is planted dead");
    assert_eq!(density[2], 0.05, "latent 2 is planted at 5%");
    let frac =
        |p: &dyn Fn(f64) -> bool| density.iter().filter(|&&d| p(d)).count() as f64 / LATENTS as f64;
    close("dead_fraction", m.dead_fraction, frac(&|d| d == 0.0));
    close("dense_fraction", m.dense_fraction, frac(&|d| d > 0.1));
    close(
        "freq_over_1_percent",
        m.freq_over_1_percent,
        frac(&|d| d > 0.01),
    );
    let mut hist = vec![0u64; 20];
    for d in &density {
        // Bins of 0.5 in log10(density + 1e-10), from −10 to 0.
        let bin = ((d + 1e-10).log10() + 10.0) / 0.5;
        hist[(bin.floor().max(0.0) as usize).min(19)] += 1;
    }
    assert_eq!(m.log10_density_histogram, hist, "log10_density_histogram");
    assert_eq!(m.tokens, N as u64);
}
