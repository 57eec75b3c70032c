//! Sentence-embedding benchmark: texts embedded per second by saescope's own BERT encoder (the
//! bundled all-MiniLM-L6-v2), for `scripts/bench-embed`, which runs sentence-transformers on the
//! same texts and threads in the same call.
//!
//! Usage: bench_embed TEXTS_FILE THREADS [BATCH]   (one text a line; batch default 32)

use saescope_activations::assets;
use saescope_activations::bert::SentenceEncoder;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: bench_embed TEXTS_FILE THREADS [BATCH]".into());
    }
    let text = std::fs::read_to_string(&args[1])?;
    let texts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let threads: i32 = args[2].parse()?;
    let batch: usize = args.get(3).map_or(Ok(32), |b| b.parse())?;
    tch::set_num_threads(threads);
    let t0 = Instant::now();
    let enc = SentenceEncoder::open(&assets::embedding_model(), tch::Device::Cpu)?;
    let load = t0.elapsed().as_secs_f64();
    // One warm-up batch, then every text.
    enc.encode(&texts[..texts.len().min(batch)], batch)?;
    let t1 = Instant::now();
    let vectors = enc.encode(&texts, batch)?;
    let secs = t1.elapsed().as_secs_f64();
    let tokens: usize = texts
        .iter()
        .map(|t| enc.token_ids(t).map_or(0, |ids| ids.len()))
        .sum();
    println!(
        "saescope: {} texts ({tokens} tokens) in {secs:.2} s: {:.1} texts/s (load {load:.2} s, batch {batch}, {threads} threads, {} wide)",
        vectors.len(),
        vectors.len() as f64 / secs,
        vectors[0].len()
    );
    Ok(())
}
