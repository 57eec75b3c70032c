//! Feature-analysis benchmark: a 16,384-feature TopK dictionary (d = 576, k = 32) over a
//! synthetic run of 1M tokens. Times a pass that only reads and encodes the run, then the full
//! analysis pass, and prints tokens/s, features/s and the process's peak memory. The target:
//! the analysis runs at the encoding rate (the analysis itself is not the bottleneck). Then it
//! writes the feature store, and times the analysis alone: the pass with its codes replayed
//! from memory, which is how fast analysis goes when encoding costs nothing.
//! ENCODER_THREADS (default: all cores) leaves the other cores to folding, as on a machine with
//! cores to spare. Last, it draws autointerp example sets (`saescope examples`' pass) for
//! EXAMPLE_LATENTS latents (default 1,000, spread over the dictionary; 0 skips it) on the same
//! run and compares its time with the analysis pass's, and its rate, as the analysis's, with the
//! encode-only passes either side.
//!   cargo run --release -p saescope-analysis --example bench_analyze [-- TOKENS [ROUNDS [ENCODER_THREADS [EXAMPLE_LATENTS]]]]

use saescope_analysis::examples::{ExampleConfig, build_examples};
use saescope_analysis::features::{
    AnalyzeConfig, TokenTable, WeightFacts, analyze, decoder_neighbours,
};
use saescope_sae::dictionary::Dictionary;
use saescope_sae::seeded::Seeded;
use saescope_sae::sparse::SparseCodes;
use saescope_sae::topk::{Selection, TopKSae};
use saescope_sae::train::native_bf16;
use saescope_store::features::{FEATURE_STORE_VERSION, Summary, write_feature_store};
use saescope_store::{Dtype, ReadOptions, Run, RunWriter, WriterOptions, synthetic};
use std::cell::Cell;
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

/// Hands back codes recorded from `sae`, batch by batch in reading order, so that a pass
/// measures the analysis without the encoding.
struct Replay<'a> {
    sae: &'a TopKSae,
    codes: Vec<SparseCodes>,
    next: Cell<usize>,
}

impl Dictionary for Replay<'_> {
    fn d_in(&self) -> usize {
        self.sae.d_in()
    }
    fn n_latents(&self) -> usize {
        self.sae.n_latents()
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        let i = self.next.replace(self.next.get() + 1);
        let c = &self.codes[i];
        assert_eq!(
            c.rows as i64,
            x.size()[0],
            "batch {i} replayed out of order"
        );
        SparseCodes {
            cols: c.cols.shallow_clone(),
            vals: c.vals.shallow_clone(),
            offsets: c.offsets.shallow_clone(),
            rows: c.rows,
            n_latents: c.n_latents,
        }
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        self.sae.decode(codes)
    }
    fn atoms(&self) -> Tensor {
        self.sae.atoms()
    }
}

fn main() {
    // Measure what `saescope analyze` runs: OpenMP threads that wait passively, unless the
    // caller set a policy.
    if let Some(e) = saescope_analysis::features::reexec_with_passive_openmp() {
        eprintln!("could not restart with OMP_WAIT_POLICY=PASSIVE: {e}");
    }
    let arg = |i: usize| std::env::args().nth(i).and_then(|s| s.parse::<u64>().ok());
    let tokens = arg(1).unwrap_or(1_000_000);
    if let Some(threads) = arg(3) {
        tch::set_num_threads(threads as i32);
    }
    // ROUNDS = 0: only the analysis alone (for profiling it).
    let rounds = arg(2).unwrap_or(1);
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
        "analysis benchmark: {tokens} tokens x {d}, {n} features, k = {k}, {} encoder threads on {} cores, OMP_WAIT_POLICY {} (run written in {:.1} s)",
        tch::get_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
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

    // Read and encode only: the rate analysis must keep up with. `keep` keeps the codes.
    let encode_only = |keep: bool| {
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let mut nnz = 0i64;
        let mut kept = Vec::new();
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
            let codes = sae.encode(&x);
            nnz += codes.vals.numel() as i64;
            if keep {
                kept.push(codes);
            }
        }
        assert_eq!(nnz as u64, tokens * k as u64);
        (t.elapsed().as_secs_f64(), cpu_seconds() - cpu, kept)
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
    let analysis = |dict: &dyn Dictionary| {
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let a = analyze(
            dict,
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

    let encode_s = (rounds > 0).then(|| {
        // Encode-only passes and analyses alternate, starting and ending with an encode-only
        // pass, so each analysis has one on either side and neither gets the warmer caches.
        let (mut encode, mut encode_cpu) = (Vec::new(), Vec::new());
        let (mut analysed, mut analysed_cpu) = (Vec::new(), Vec::new());
        let mut last = None;
        let mut peak_mb = 0f64;
        for round in 0..=rounds {
            let (secs, cpu, _) = encode_only(false);
            encode.push(secs);
            encode_cpu.push(cpu);
            if round == rounds {
                break;
            }
            drop(last.take()); // one analysis in memory at a time
            let (secs, cpu, a) = analysis(&sae);
            peak_mb = peak_rss_mb();
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
            "last analysis: folding spanned {:.1} s of wall time on idle-priority threads and used {:.1} s of CPU time; the encoder waited {:.2} s for it, and it ended {:.2} s after the last batch encoded; rows built in {:.2} s; {} contexts",
            a.fold_seconds,
            a.fold_cpu_seconds,
            a.wait_seconds,
            a.drain_seconds,
            a.finish_seconds,
            a.contexts.len(),
        );
        println!("token table and neighbours {prep_s:.1} s; peak memory through the analyses {peak_mb:.0} MB");

        // What `saescope analyze` does next: write the feature store.
        let t = Instant::now();
        let out = dir.path().join("features");
        let summary = Summary {
            format_version: FEATURE_STORE_VERSION,
            dictionary: "bench".into(),
            run: None,
            hook: hook.into(),
            method: "topk".into(),
            features: n as u64,
            tokens: a.tokens,
            dead: a.features.iter().filter(|f| f.count == 0).count() as u64,
            log10_density_histogram: a.log10_density_histogram.clone(),
            intervals: 10,
            per_interval: 5,
            top_contexts: 20,
            window_before: 12,
            window_after: 4,
            seconds: 0.0,
            definitions: serde_json::json!({}),
        };
        write_feature_store(
            &out,
            &a.features,
            &a.contexts,
            &a.neighbours,
            &vocab,
            &summary,
        )
        .expect("write the feature store");
        let bytes: u64 = std::fs::read_dir(&out)
            .expect("store")
            .map(|e| e.expect("entry").metadata().expect("size").len())
            .sum();
        println!(
            "feature store written in {:.1} s ({:.0} MB); peak memory with the write {:.0} MB",
            t.elapsed().as_secs_f64(),
            bytes as f64 / 1e6,
            peak_rss_mb()
        );
        drop(a);
        (encode_s, analyze_s, encode[encode.len() - 1])
    });
    let (encode_s, analyze_s, last_encode_s) = match encode_s {
        Some((e, a, l)) => (Some(e), Some(a), Some(l)),
        None => (None, None, None),
    };

    // Example sets for autointerp: `saescope examples`' pass over the same run, encoder and
    // neighbours (each latent's 10 nearest decoder directions give its hard negatives).
    let example_latents = arg(4).unwrap_or(1_000) as usize;
    if example_latents > 0 {
        let chosen: Vec<u32> = (0..example_latents)
            .map(|i| (i * n / example_latents) as u32)
            .collect();
        let near = |f: u32| weights.neighbours[f as usize].iter().map(|x| x.0).collect();
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let sets = build_examples(
            &sae,
            &run,
            hook,
            &table,
            &chosen,
            &near,
            &ExampleConfig::default(),
            Device::Cpu,
            &mut |_| {},
        )
        .expect("example sets");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "example sets for {example_latents} latents: {secs:.1} s ({:.0} tokens/s, cores busy {:.2}), {} windows, {} latents skipped for fewer than {} activating windows; {}",
            tokens as f64 / secs,
            (cpu_seconds() - cpu) / secs,
            sets.rows.len(),
            sets.skipped.len(),
            ExampleConfig::default().min_activating,
            match analyze_s {
                Some(a) => format!("{:.3} x the analysis pass's time ({a:.1} s)", secs / a),
                None => "no analysis pass to compare with (ROUNDS = 0)".into(),
            }
        );
        // Judged as the analysis is: against the encode-only passes either side, since this
        // machine's speed drifts between passes by more than the difference sought.
        if let Some(before) = last_encode_s {
            let (after, _, _) = encode_only(false);
            println!(
                "example sets / encode rate: {:.3} (against the encode-only passes either side: {before:.1} and {after:.1} s)",
                (before + after) / 2.0 / secs
            );
        }
    }

    // The analysis alone: the same pass, its codes replayed from memory instead of encoded.
    let (recorded_s, _, codes) = encode_only(true);
    let encode_s = encode_s.unwrap_or(recorded_s);
    let replay = Replay {
        sae: &sae,
        codes,
        next: Cell::new(0),
    };
    let (secs, _, r) = analysis(&replay);
    println!(
        "analysis alone (codes replayed, not encoded): {secs:.1} s, {:.0} tokens/s, {:.1} x the encoding rate; folding used {:.1} s of CPU time, rows built in {:.2} s",
        tokens as f64 / secs,
        encode_s / secs,
        r.fold_cpu_seconds,
        r.finish_seconds
    );
    drop(r);
}
