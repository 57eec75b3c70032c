//! Feature-analysis benchmark: a 16,384-feature TopK dictionary (d = 576, k = 32) over a
//! synthetic run of 1M tokens. Times a pass that only reads and encodes the run, then the full
//! analysis pass, and prints tokens/s, features/s and the process's peak memory. The target:
//! the analysis runs at the encoding rate (the analysis itself is not the bottleneck).
//!   cargo run --release -p saescope-sae --example bench_analyze [-- TOKENS [ROUNDS]]

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

/// CPU time of the whole process (user + system, all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses: utime and stime are the
            // 12th and 13th, in clock ticks (100 a second on Linux).
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn main() {
    // Measure what `saescope analyze` runs: OpenMP threads that wait passively, unless the
    // caller set a policy.
    if let Some(e) = saescope_sae::analyze::reexec_with_passive_openmp() {
        eprintln!("could not restart with OMP_WAIT_POLICY=PASSIVE: {e}");
    }
    let arg = |i: usize| std::env::args().nth(i).and_then(|s| s.parse::<u64>().ok());
    let tokens = arg(1).unwrap_or(1_000_000);
    let rounds = arg(2).unwrap_or(1).max(1);
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
        "analysis benchmark: {tokens} tokens x {d}, {n} features, k = {k}, {} threads, OMP_WAIT_POLICY {} (run written in {:.1} s)",
        tch::get_num_threads(),
        std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "unset".into()),
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

    // Read and encode only: the rate analysis must keep up with.
    let encode_only = || {
        let (t, cpu) = (Instant::now(), cpu_seconds());
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
        (t.elapsed().as_secs_f64(), cpu_seconds() - cpu)
    };
    let t = Instant::now();
    let table = TokenTable::read(&run).expect("tokens");
    let weights = WeightFacts {
        neighbours: decoder_neighbours(&sae.atoms(), 10),
        logits: Vec::new(),
        head_share: Vec::new(),
    };
    // Tokens are named from a vocabulary table, as `saescope analyze` does.
    let vocab: Vec<String> = (0..run.manifest().tokenizer.vocab_size)
        .map(|i| format!("tok{i}"))
        .collect();
    let token_str = |i: u32| vocab.get(i as usize).cloned().unwrap_or_default();
    let prep_s = t.elapsed().as_secs_f64();
    let analysis = || {
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let a = analyze(
            &sae,
            &run,
            hook,
            &table,
            &weights,
            &token_str,
            &AnalyzeConfig::default(),
            Device::Cpu,
            &mut |_| {},
        )
        .expect("analyze");
        (t.elapsed().as_secs_f64(), cpu_seconds() - cpu, a)
    };

    // Encode-only passes and analyses alternate, starting and ending with an encode-only pass,
    // so each analysis has one on either side and neither kind gets the warmer caches.
    let (mut encode, mut encode_cpu) = (Vec::new(), Vec::new());
    let (mut analysed, mut analysed_cpu) = (Vec::new(), Vec::new());
    let mut last = None;
    for round in 0..=rounds {
        let (secs, cpu) = encode_only();
        encode.push(secs);
        encode_cpu.push(cpu);
        if round == rounds {
            break;
        }
        drop(last.take()); // one analysis in memory at a time
        let (secs, cpu, a) = analysis();
        analysed.push(secs);
        analysed_cpu.push(cpu);
        last = Some(a);
    }
    let a = last.expect("at least one round");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (encode_s, analyze_s) = (mean(&encode), mean(&analysed));
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
    println!(
        "{:<28} {:>9.1} {:>12.0} {:>12.0}",
        "analysis pass (mean)",
        analyze_s,
        tokens as f64 / analyze_s,
        n as f64 / analyze_s
    );
    println!("  encode-only passes: {} s", list(&encode));
    println!("  analysis passes:    {} s", list(&analysed));
    println!(
        "  cores busy (CPU time / wall time): encode-only {:.2}, analysis {:.2}",
        mean(&encode_cpu) / encode_s,
        mean(&analysed_cpu) / analyze_s
    );
    let per_round: Vec<String> = analysed
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{:.3}", (encode[i] + encode[i + 1]) / 2.0 / s))
        .collect();
    println!(
        "analysis / encode rate: {:.3} (each round against the encode-only passes either side: {})",
        encode_s / analyze_s,
        per_round.join(", ")
    );
    println!(
        "last analysis: folding spanned {:.1} s of wall time on idle-priority threads and used {:.1} s of CPU time, {:.2} s after the last batch encoded; rows built in {:.2} s; {} contexts",
        a.fold_seconds,
        a.fold_cpu_seconds,
        a.drain_seconds,
        a.finish_seconds,
        a.contexts.len(),
    );
    println!(
        "token table and neighbours {prep_s:.1} s; peak memory {:.0} MB",
        peak_rss_mb()
    );
}
