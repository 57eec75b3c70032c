//! One pass over a hook's activations that checks what it reads: every row arrives, and every
//! value is finite. The demo uses it to show a run reads back, in order and shuffled.

use crate::error::Result;
use crate::reader::{ReadOptions, Run};

/// What a pass over one hook found.
#[derive(Clone, Debug, PartialEq)]
pub struct Scan {
    /// Rows (tokens) read.
    pub rows: u64,
    /// The rows' mean L2 norm.
    pub mean_norm: f64,
    /// Values that were NaN or infinite.
    pub non_finite: u64,
}

impl Run {
    /// Reads every row of `hook` as `opts` says, calling `progress` with the rows read so far.
    pub fn scan(
        &self,
        hook: &str,
        opts: &ReadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Scan> {
        let (mut rows, mut sum_norm, mut non_finite) = (0u64, 0f64, 0u64);
        for batch in self.batches(hook, opts)? {
            let b = batch?;
            for r in 0..b.rows() {
                let row = b.row(r);
                non_finite += row.iter().filter(|v| !v.is_finite()).count() as u64;
                sum_norm += row
                    .iter()
                    .map(|&v| f64::from(v) * f64::from(v))
                    .sum::<f64>()
                    .sqrt();
            }
            rows += b.rows() as u64;
            progress(rows);
        }
        Ok(Scan {
            rows,
            mean_norm: sum_norm / rows.max(1) as f64,
            non_finite,
        })
    }
}
