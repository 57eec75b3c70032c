//! Deterministic synthetic runs, for the demo, the benchmark and the tests.
//!
//! Every value is a pure function of (token index, hook index, component), so a reader can
//! check every value it gets back exactly, and a resumed writer produces the same bytes as an
//! uninterrupted one. Nothing here pretends to be model output: runs made with it say
//! `synthetic` as their model name.

use crate::error::Result;
use crate::manifest::{
    BosHandling, ContextInfo, CorpusInfo, Dtype, HookInfo, ModelInfo, RunSpec, TokenizerInfo,
};
use crate::writer::{RunWriter, TokenRecord};

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The value of component `j` of hook `hook` at token `token`: uniform in [-4, 4), on a grid of
/// 2^-12 so that it is exact in f32 (and in f16/bf16 up to their rounding).
pub fn value(token: u64, hook: usize, j: usize) -> f32 {
    let h = splitmix64(token.wrapping_mul(0x100_0000_01B3) ^ ((hook as u64) << 48) ^ j as u64);
    ((h >> 49) as i32 - (1 << 14)) as f32 / 4096.0
}

/// Appends `rows` rows of hook `hook` starting at token `first`.
pub fn fill(first: u64, rows: usize, hook: usize, dim: usize, out: &mut Vec<f32>) {
    out.reserve(rows * dim);
    for t in first..first + rows as u64 {
        out.extend((0..dim).map(|j| value(t, hook, j)));
    }
}

/// The token record of synthetic token `t` in contexts of `ctx_len`, BOS first in each.
pub fn token(t: u64, ctx_len: u32, vocab: u32) -> TokenRecord {
    let ctx_len = ctx_len.max(2) as u64;
    let (context_id, pos) = (t / ctx_len, (t % ctx_len) as u32);
    // Document tokens before t (every context spends one position on BOS).
    let doc_token = t.saturating_sub(context_id + 1);
    TokenRecord {
        context_id,
        context_pos: pos,
        doc_id: (pos > 0).then_some(doc_token / 1000),
        doc_pos: (pos > 0).then_some((doc_token % 1000) as u32),
        token_id: if pos == 0 {
            1
        } else {
            2 + (splitmix64(t) % (vocab as u64 - 2)) as u32
        },
    }
}

/// A run description for synthetic data with the given hooks (name, shape, dtype).
pub fn spec(hooks: Vec<HookInfo>, ctx_len: u32) -> RunSpec {
    RunSpec {
        model: ModelInfo {
            name: "synthetic".into(),
            architecture: None,
            file: None,
            sha256: None,
            compute_dtype: None,
        },
        tokenizer: TokenizerInfo {
            name: "synthetic".into(),
            vocab_size: 49_152,
            bos_token_id: Some(1),
            eos_token_id: None,
        },
        context: ContextInfo {
            ctx_len,
            bos: BosHandling::PrependEachContext,
        },
        hooks,
        corpus: CorpusInfo {
            name: "synthetic".into(),
            description: Some(
                "deterministic pseudo-random values; see saescope_store::synthetic::value".into(),
            ),
            ..CorpusInfo::default()
        },
        extra: Default::default(),
    }
}

/// A hook with the given shape, for synthetic specs.
pub fn hook(name: &str, shape: &[usize], dtype: Dtype) -> HookInfo {
    HookInfo {
        name: name.into(),
        shape: shape.to_vec(),
        dtype,
    }
}

/// Feeds `writer` synthetic tokens from where it stands up to the run's token `total`, `batch`
/// at a time, calling `progress` with the run's tokens so far after each batch. A part of a run
/// starts at its first token, so its values are the run's own.
pub fn append_until(
    writer: &mut RunWriter,
    total: u64,
    batch: usize,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    let hooks = writer.manifest().hooks.clone();
    let ctx_len = writer.manifest().context.ctx_len;
    let vocab = writer.manifest().tokenizer.vocab_size.max(3);
    let mut bufs: Vec<Vec<f32>> = vec![Vec::new(); hooks.len()];
    let mut start = writer.manifest().first_token + writer.tokens_accepted();
    while start < total {
        let n = (total - start).min(batch.max(1) as u64) as usize;
        let tokens: Vec<TokenRecord> = (start..start + n as u64)
            .map(|t| token(t, ctx_len, vocab))
            .collect();
        for (i, (h, b)) in hooks.iter().zip(&mut bufs).enumerate() {
            b.clear();
            fill(start, n, i, h.dim(), b);
        }
        let views: Vec<&[f32]> = bufs.iter().map(Vec::as_slice).collect();
        writer.append(&tokens, &views)?;
        start += n as u64;
        progress(start);
    }
    Ok(())
}
