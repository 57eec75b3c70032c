//! What training tells its caller: progress as it goes ([`Observer`]) and the result
//! ([`TrainReport`]). The library shows nothing itself.

use crate::dictionary::AnyDictionary;
use saescope_store::dictionary::{LogLine, Metrics};

/// What a finished training run reports.
pub struct TrainReport {
    /// The trained dictionary, in input units.
    pub dictionary: AnyDictionary,
    /// Steps taken (0 for SNMF).
    pub steps: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// The input scale folded into the saved weights.
    pub scale: f64,
    /// Held-out metrics, when there was held-out data.
    pub metrics: Option<Metrics>,
}

/// Callbacks for the caller's progress display.
pub trait Observer {
    /// Training is about to take `total_steps` steps of `batch_tokens` tokens.
    fn start(&mut self, _total_steps: u64, _batch_tokens: usize) {}
    /// Step `step` (counted from 1) was taken; `line` holds its figures when the step was
    /// logged (the figures are read only then: on a GPU a read waits for the queue).
    fn step(&mut self, _step: u64, _line: Option<&LogLine>) {}
    /// A checkpoint was written to the dictionary directory.
    fn checkpoint(&mut self) {}
}

impl Observer for () {}
