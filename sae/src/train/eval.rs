//! Reconstruction metrics of a dictionary over a source of rows: what training reports on its
//! held-out data.

use crate::data::{Source, rows_to_tensor};
use crate::dictionary::Dictionary;
use crate::error::{Result, SaeError};
use crate::metrics::Accumulator;
use saescope_store::dictionary::Metrics;
use tch::Device;

/// Reconstruction metrics of `dict` over up to `tokens` rows of `source`.
pub fn evaluate(
    dict: &dyn Dictionary,
    source: &dyn Source,
    tokens: u64,
    batch: usize,
    device: Device,
) -> Result<Metrics> {
    let _guard = tch::no_grad_guard();
    let d = source.dim();
    let mut acc = Accumulator::new(d, dict.n_latents());
    let mut seen = 0u64;
    let mut pending: Vec<f32> = Vec::new();
    let mut chunks = source.epoch(0)?;
    loop {
        let next = chunks.next().transpose()?;
        if let Some(c) = &next {
            pending.extend_from_slice(c);
        }
        while pending.len() >= batch * d || (next.is_none() && !pending.is_empty()) {
            let take = pending.len().min(batch * d);
            let rows: Vec<f32> = pending.drain(..take).collect();
            let mut x = rows_to_tensor(&rows, d, device);
            let left = tokens.saturating_sub(seen);
            if (x.size()[0] as u64) > left {
                x = x.narrow(0, 0, left as i64);
            }
            let (codes, recon) = dict.reconstruct(&x);
            acc.add(&x, &recon, &codes);
            seen += x.size()[0] as u64;
            if seen >= tokens {
                return Ok(acc.finish());
            }
        }
        if next.is_none() {
            break;
        }
    }
    if seen == 0 {
        return Err(SaeError::Data("no held-out tokens to evaluate on".into()));
    }
    Ok(acc.finish())
}

/// Rows in one pass over `source`.
pub(crate) fn count_rows(source: &dyn Source) -> Result<u64> {
    let mut rows = 0u64;
    for chunk in source.epoch(0)? {
        rows += (chunk?.len() / source.dim()) as u64;
    }
    Ok(rows)
}
