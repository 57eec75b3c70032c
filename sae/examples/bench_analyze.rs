//! Feature-analysis benchmark: a 16,384-feature TopK dictionary (d = 576, k = 32) over a
//! synthetic run of 1M tokens. Times a pass that only reads and encodes the run, then the full
//! analysis pass, and prints tokens/s, features/s and the process's peak memory. The target:
//! the analysis runs at the encoding rate (the analysis itself is not the bottleneck).
//!   cargo run --release -p saescope-sae --example bench_analyze [-- TOKENS]

use saescope_sae::analyze::{AnalyzeConfig, TokenTable, WeightFacts, analyze, decoder_neighbours};
use saescope_sae::dictionary::Dictionary;
use saescope_sae::seeded::Seeded;
use saescope_sae::topk::{Selection, TopKSae};
use saescope_sae::train::native_bf16;
use saescope_store::{Dtype, ReadOptions, Run, RunWriter, WriterOptions, synthetic};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let tokens: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let (d, n, k) = (576usize, 16_384usize, 32usize);
    let dir = tempfile::tempdir().expect("temp dir");
    let hook = "blocks.6.hook_resid_post";
    let t = Instant::now();
    let mut w = RunWriter::create(
        dir.path(),
        synthetic::spec(vec![synthetic::hook(hook, &[d], Dtype::F32)], 128),
        &WriterOptions::default(),
    )
    .expect("run");
    synthetic::append_until(&mut w, tokens, 16_384, |_| {}).expect("write");
    w.finish().expect("finish");
    let run = Run::open(dir.path()).expect("open");
    println!(
        "analysis benchmark: {tokens} tokens x {d}, {n} features, k = {k}, {} threads (run written in {:.1} s)",
        tch::get_num_threads(),
        t.elapsed().as_secs_f64()
    );

    let mut rng = Seeded::new(0);
    let w_enc = rng.normal(&[n as i64, d as i64], Device::Cpu) / (d as f64).sqrt();
    let sae = TopKSae {
        w_dec: &w_enc / w_enc.norm_scalaropt_dim(2.0, [1], true),
        w_enc,
        b_enc: Tensor::zeros([n as i64], (Kind::Float, Device::Cpu)),
        b_dec: Tensor::zeros([d as i64], (Kind::Float, Device::Cpu)),
        k,
        selection: Selection::TopK,
        threshold: None,
        bf16_select: native_bf16(Device::Cpu),
    };
    let _g = tch::no_grad_guard();

    // Read and encode only: the rate analysis must keep up with. Timed before and after the
    // analysis, so neither side gets the warmer caches.
    let encode_only = || {
        let t = Instant::now();
        let mut nnz = 0i64;
        for b in run
            .batches(
                hook,
                &ReadOptions {
                    batch_tokens: 4096,
                    ..ReadOptions::default()
                },
            )
            .expect("batches")
        {
            let b = b.expect("batch");
            let x = Tensor::from_slice(&b.data).view([b.rows() as i64, d as i64]);
            nnz += sae.encode(&x).vals.numel() as i64;
        }
        assert_eq!(nnz as u64, tokens * k as u64);
        t.elapsed().as_secs_f64()
    };
    let encode_before = encode_only();

    let t = Instant::now();
    let table = TokenTable::read(&run).expect("tokens");
    let weights = WeightFacts {
        neighbours: decoder_neighbours(&sae.atoms(), 10),
        logits: Vec::new(),
        head_share: Vec::new(),
    };
    let prep_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let a = analyze(
        &sae,
        &run,
        hook,
        &table,
        &weights,
        &|i| i.to_string(),
        &AnalyzeConfig::default(),
        Device::Cpu,
        &mut |_| {},
    )
    .expect("analyze");
    let analyze_s = t.elapsed().as_secs_f64();
    let encode_after = encode_only();
    let encode_s = (encode_before + encode_after) / 2.0;
    println!(
        "{:<28} {:>9} {:>12} {:>12}",
        "", "seconds", "tokens/s", "features/s"
    );
    println!(
        "{:<28} {:>9.1} {:>12.0} {:>12}",
        "read + encode only (mean)",
        encode_s,
        tokens as f64 / encode_s,
        "-"
    );
    println!("  (before the analysis {encode_before:.1} s, after it {encode_after:.1} s)");
    println!(
        "{:<28} {:>9.1} {:>12.0} {:>12.0}",
        "analysis pass",
        analyze_s,
        tokens as f64 / analyze_s,
        n as f64 / analyze_s
    );
    println!(
        "analysis / encode rate: {:.2}; folding spanned {:.1} s of wall time on idle-priority threads; token table and neighbours {:.1} s; {} contexts; peak memory {:.0} MB",
        encode_s / analyze_s,
        a.fold_seconds,
        prep_s,
        a.contexts.len(),
        peak_rss_mb()
    );
}
