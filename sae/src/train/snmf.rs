//! SNMF's training path: the alternating solver of [`crate::snmf`] behind the same inputs and
//! outputs as the gradient learners. Full batch when the token budget fits in memory (checked
//! against what the machine has free), else the online variant when `snmf.minibatch` asks.

use super::config::TrainConfig;
use super::eval::count_rows;
use super::outputs::{self, Provenance};
use super::report::{Observer, TrainReport};
use crate::data::{Batcher, Source, rows_to_tensor};
use crate::dictionary::{AnyDictionary, SnmfDictionary};
use crate::error::{Result, SaeError};
use crate::snmf::{Snmf, full_batch_bytes};
use saescope_store::DictDir;
use saescope_store::dictionary::LogLine;
use tch::Device;

/// A solver iteration as a log line: only the loss means anything there.
fn iteration(it: usize, loss: f64) -> LogLine {
    LogLine {
        step: it as u64 + 1,
        tokens: 0,
        lr: 0.0,
        loss,
        fvu: f64::NAN,
        aux_loss: 0.0,
        l0: f64::NAN,
        dead_fraction: f64::NAN,
        grad_norm: 0.0,
    }
}

/// SNMF: full batch when the token budget fits in memory, else refused unless `minibatch` asks
/// for the online variant.
pub(crate) fn run(
    train: &dyn Source,
    heldout: Option<&dyn Source>,
    cfg: &TrainConfig,
    out: &DictDir,
    device: Device,
    from: &Provenance,
    observer: &mut dyn Observer,
) -> Result<TrainReport> {
    let _guard = tch::no_grad_guard();
    let m = train.dim();
    let k = cfg.latents_for(m);
    let budget = if cfg.tokens > 0 {
        cfg.tokens
    } else {
        count_rows(train)?
    };
    let snmf = if cfg.snmf.minibatch == 0 {
        let need = full_batch_bytes(budget as usize, m, k);
        let avail = available_memory();
        if let Some(avail) = avail
            && need > avail / 2
        {
            return Err(SaeError::Config(format!(
                "full-batch SNMF on {budget} tokens x {m} neurons x {k} features needs about {:.1} GiB, more than half of the {:.1} GiB available; lower --tokens or set snmf.minibatch for the online variant",
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            )));
        }
        let mut rows = Vec::with_capacity(budget as usize * m);
        for chunk in train.epoch(0)? {
            rows.extend_from_slice(&chunk?);
            if rows.len() >= budget as usize * m {
                break;
            }
        }
        rows.truncate(budget as usize * m);
        let a = rows_to_tensor(&rows, m, device);
        observer.start(cfg.snmf.max_iter as u64, a.size()[0] as usize);
        let mut prog = |it: usize, l: f64| observer.step(it as u64 + 1, Some(&iteration(it, l)));
        Snmf::fit(&a, k, &cfg.snmf, cfg.seed, &mut prog).0
    } else {
        let steps = budget / cfg.snmf.minibatch as u64;
        observer.start(steps, cfg.snmf.minibatch);
        let mut batcher = Batcher::new(train, cfg.snmf.minibatch, 0, 0)?;
        let mut iter = (0..steps).map_while(|_| {
            batcher
                .next_batch()
                .ok()
                .map(|r| rows_to_tensor(&r, m, Device::Cpu))
        });
        let mut prog = |it: usize, l: f64| observer.step(it as u64 + 1, Some(&iteration(it, l)));
        Snmf::fit_online(&mut iter, m, k, &cfg.snmf, cfg.seed, device, &mut prog)
    };
    let dictionary = AnyDictionary::Snmf(SnmfDictionary {
        snmf,
        encode_iters: cfg.snmf.inner_iter,
    });
    let metrics = outputs::evaluate_and_save(out, &dictionary, cfg, 1.0, heldout, device, from)?;
    Ok(TrainReport {
        dictionary,
        steps: 0,
        tokens: budget,
        scale: 1.0,
        metrics,
    })
}

/// MemAvailable from /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
