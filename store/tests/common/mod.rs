#![allow(dead_code)]
use saescope_store::{Dtype, HookInfo, Manifest, Run, RunWriter, WriterOptions, synthetic};
use std::path::Path;

pub const RESID: &str = "blocks.0.hook_resid_post";
pub const Z: &str = "blocks.0.attn.hook_z";

pub fn hooks(dtype_z: Dtype) -> Vec<HookInfo> {
    vec![
        synthetic::hook(RESID, &[24], Dtype::F32),
        synthetic::hook(Z, &[3, 4], dtype_z),
    ]
}

/// Small shards and row groups so that a few thousand tokens span several of each.
pub fn small_opts() -> WriterOptions {
    WriterOptions {
        // 24*4 + 12*2 = 120 bytes a row (f16 z): 1000 rows a shard, 250 a row group.
        shard_bytes: 120_000,
        row_group_bytes: 30_000,
        ..WriterOptions::default()
    }
}

/// Writes a complete synthetic run of `tokens` tokens, appending in odd-sized batches so that
/// batches straddle row-group and shard boundaries.
pub fn write_run(dir: &Path, tokens: u64, dtype_z: Dtype) -> Manifest {
    let mut w = RunWriter::create(dir, synthetic::spec(hooks(dtype_z), 64), &small_opts()).unwrap();
    synthetic::append_until(&mut w, tokens, 333, |_| {}).unwrap();
    w.finish().unwrap()
}

pub fn open(dir: &Path) -> Run {
    Run::open(dir).unwrap()
}

/// Rewrites the manifest through a JSON edit (to simulate a tampered or mismatched manifest).
pub fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}
