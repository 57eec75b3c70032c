//! Times `saescope store merge` on a run harvested in parts: writes PARTS synthetic parts of
//! SHARDS shards each (one hook of 576 f32, 1,000 tokens a shard), then merges them, three
//! times over (the first merge writes the manifest, the next two find it and check it).
//! With RUN (`s3://bucket/prefix`, credentials from the environment), the parts are written to
//! object storage and merged there; by default, to a temporary directory.
//!
//!     cargo run --release -p saescope-store --example bench_merge [PARTS] [SHARDS_PER_PART] [RUN]

use saescope_store::{Dtype, PartInfo, RunWriter, WriterOptions, parts, synthetic};
use std::time::Instant;

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u32| {
        argv.get(i)
            .map_or(default, |a| a.parse::<u32>().expect("a number"))
    };
    let count = number(0, 4);
    let per_part = number(1, 25) as u64;
    let dim = 576;
    let rows = 1000u64;
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let run = argv
        .get(2)
        .map_or_else(|| tmp.path().join("run"), std::path::PathBuf::from);
    let spec = synthetic::spec(
        vec![synthetic::hook(
            "blocks.6.hook_resid_post",
            &[dim],
            Dtype::F32,
        )],
        128,
    );
    let opts = WriterOptions {
        shard_bytes: rows * dim as u64 * 4,
        row_group_bytes: rows * dim as u64 * 4,
        ..WriterOptions::default()
    };
    let tokens = per_part * rows;
    let run_tokens = tokens * count as u64;
    let t = Instant::now();
    for i in 0..count {
        let info = PartInfo {
            index: i,
            count,
            tokens,
            run_tokens,
        };
        let dir = parts::part_dir(&run, i, count);
        let first = i as u64 * tokens;
        let mut w = RunWriter::create_part(&dir, spec.clone(), &opts, first, info).expect("part");
        synthetic::append_until(&mut w, first + tokens, 4096, |_| {}).expect("rows");
        w.finish().expect("finish");
    }
    let write = t.elapsed().as_secs_f64();
    let mb = (run_tokens * dim as u64 * 4) as f64 / 1e6;
    println!(
        "{}: wrote {count} parts, {} shards, {mb:.0} MB in {write:.2} s ({:.1} parts/s, {:.0} MB/s)",
        run.display(),
        count as u64 * per_part,
        count as f64 / write,
        mb / write
    );
    for round in 0..3 {
        let t = Instant::now();
        let m = parts::merge(&run).expect("merge");
        println!(
            "merge {}: {} shards, {} tokens in {:.1} ms",
            round + 1,
            m.shards.len(),
            m.total_tokens,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}
