#![allow(dead_code)]
//! Where the bundled assets are, for the tests that use them. The README's test command installs
//! them first (`saescope setup`).

use std::path::PathBuf;

pub fn cache() -> PathBuf {
    std::env::var_os("SAESCOPE_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/saescope")
        })
}

/// Reads a bundled asset file, with a hint when it is not installed.
pub fn read_asset(rel: &str) -> Vec<u8> {
    let path = cache().join("assets").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run ./scripts/test or `saescope setup` first)",
            path.display()
        )
    })
}

/// The bundled SmolLM2-135M GGUF file's bytes.
pub fn smollm2_gguf() -> Vec<u8> {
    read_asset("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "slices of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
