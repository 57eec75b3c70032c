//! Feature analysis: one streaming pass over a harvest run that gathers, for every feature of a
//! dictionary, its firing statistics, activation histogram, top-activating contexts, samples
//! from equal-width activation intervals and co-occurrence with its nearest neighbours; plus
//! what needs no data: logit effects, decoder neighbours and per-head attribution ([`weights`]).
//!
//! Memory grows with the number of features, not of tokens: every per-feature structure is
//! bounded (a top-k list, fixed-size reservoirs, fixed histograms), and only the last few rows of
//! codes are kept, to cut the context window around an activating token ([`pass`]).
//!
//! The activation range is not known until the pass ends, so each feature's histogram and
//! interval reservoirs live on bins over [0, R), R a power of two above every value seen; when a
//! value reaches R, adjacent bins merge and R doubles. At the end the reservoirs' bins (each at
//! most max/10 wide) are gathered into the 10 intervals of [0, max] by their centres
//! ([`finish`]). [`store`] runs all of it for a session and writes the feature store.

mod config;
pub mod finish;
pub mod pass;
pub mod platform;
pub mod store;
pub mod weights;

pub use config::{AnalyzeConfig, MAX_WINDOW, TokenTable};
pub use finish::Analysis;
pub use platform::{PASSIVE_OPENMP_MARK, reexec_with_passive_openmp};
pub use store::{FeatureStoreReport, build_feature_store};
pub use weights::{
    LogitEffect, WeightFacts, decoder_neighbours, head_share, logit_effects, neuron_alignment,
};

use crate::error::{AnalysisError, Result};
use config::reservoir_bins;
use finish::{Folded, finish};
use pass::{Cooccurrence, Encoded, FeatureState, Pass, Recent};
use platform::{fold_pool, thread_cpu_seconds};
use saescope_sae::Dictionary;
use saescope_store::{ReadOptions, Run};
use tch::{Device, Kind, Tensor};

/// Runs the pass over `hook` of `run`, encoding with `dict`. `weights` come from
/// [`decoder_neighbours`], [`logit_effects`] and [`head_share`]; `token_str` names a token id
/// of the logit effects (context windows hold ids; the store's writer names them).
#[allow(clippy::too_many_arguments)]
pub fn analyze(
    dict: &dyn Dictionary,
    run: &Run,
    hook: &str,
    tokens: &TokenTable,
    weights: &WeightFacts,
    token_str: &(dyn Fn(u32) -> String + Sync),
    cfg: &AnalyzeConfig,
    device: Device,
    progress: &mut dyn FnMut(u64),
) -> Result<Analysis> {
    let _g = tch::no_grad_guard();
    if cfg.window_before + cfg.window_after + 1 > MAX_WINDOW
        || cfg.top == 0
        || cfg.intervals == 0
        || cfg.hist_bins == 0
    {
        return Err(AnalysisError::Config(format!(
            "analysis windows hold at most {MAX_WINDOW} tokens, and top, intervals and hist_bins must be positive"
        )));
    }
    let n = dict.n_latents();
    let total = run.manifest().total_tokens;
    let limit = cfg.max_tokens.unwrap_or(total).min(total);
    if tokens.token_id.len() as u64 != total {
        return Err(AnalysisError::Data(format!(
            "the run's token tables hold {} tokens, its manifest {total}",
            tokens.token_id.len()
        )));
    }
    let mut pass = Pass {
        cfg,
        tokens,
        states: vec![FeatureState::default(); n],
        hist: vec![0; n * cfg.hist_bins],
        seen: vec![0; n * reservoir_bins(cfg)],
        recent: Recent::new(),
        next_focus: 0,
        row_buf: Vec::new(),
        entries: Vec::new(),
        starts: Vec::new(),
        cooccur: Cooccurrence::new(&weights.neighbours),
    };
    let reader = run.batches(
        hook,
        &ReadOptions {
            batch_tokens: cfg.batch_tokens,
            ..ReadOptions::default()
        },
    )?;
    // Encoding (libtorch's threads) and folding (rayon's) overlap: this thread reads and
    // encodes batch i + 1 while the folder thread folds batch i into the feature states.
    let (send, recv) = std::sync::mpsc::sync_channel::<Encoded>(2);
    let pool = fold_pool()?;
    let fold_threads = &pool;
    let mut analysed = 0u64;
    let mut waited = std::time::Duration::ZERO;
    let ((folded, cooccur, fold_seconds), read_result, drain_seconds) =
        std::thread::scope(|scope| {
            let folder = scope.spawn(move || {
                fold_threads.install(|| {
                    let mut busy = std::time::Duration::ZERO;
                    for e in recv {
                        let t = std::time::Instant::now();
                        pass.push(e);
                        busy += t.elapsed();
                    }
                    let t = std::time::Instant::now();
                    let end = pass.recent.end();
                    pass.fold(end);
                    (
                        Folded {
                            states: pass.states,
                            hist: pass.hist,
                            seen: pass.seen,
                        },
                        pass.cooccur,
                        (busy + t.elapsed()).as_secs_f64(),
                    )
                })
            });
            let result = (|| -> Result<()> {
                for batch in reader {
                    let b = batch?;
                    let take = (b.rows() as u64).min(limit - analysed) as usize;
                    if take == 0 {
                        break;
                    }
                    if b.token_index[0] != analysed {
                        return Err(AnalysisError::Data(format!(
                            "rows arrived out of order (token {} after {analysed})",
                            b.token_index[0]
                        )));
                    }
                    let x = Tensor::from_slice(&b.data[..take * b.dim])
                        .view([take as i64, b.dim as i64])
                        .to_device(device);
                    let codes = dict.encode(&x);
                    let cpu = |t: &Tensor| t.to_device(Device::Cpu);
                    let encoded = Encoded {
                        first: analysed,
                        rows: take,
                        cols: Vec::<i64>::try_from(cpu(&codes.cols))?,
                        vals: Vec::<f32>::try_from(cpu(&codes.vals.to_kind(Kind::Float)))?,
                        offsets: Vec::<i64>::try_from(cpu(&codes.offsets))?,
                    };
                    let t = std::time::Instant::now();
                    let sent = send.send(encoded);
                    waited += t.elapsed();
                    if sent.is_err() {
                        break; // the folder stopped: its panic surfaces at join
                    }
                    analysed += take as u64;
                    progress(analysed);
                    if analysed >= limit {
                        break;
                    }
                }
                Ok(())
            })();
            drop(send);
            let drain = std::time::Instant::now();
            let folded = folder.join().expect("the feature folder panicked");
            (folded, result, drain.elapsed().as_secs_f64())
        });
    read_result?;
    if analysed == 0 {
        return Err(AnalysisError::Data("no tokens to analyse".into()));
    }
    let t = std::time::Instant::now();
    let mut a = finish(folded, &cooccur, weights, tokens, token_str, cfg, analysed);
    a.fold_seconds = fold_seconds;
    a.fold_cpu_seconds = pool.broadcast(|_| thread_cpu_seconds()).iter().sum();
    a.drain_seconds = drain_seconds;
    a.wait_seconds = waited.as_secs_f64();
    a.finish_seconds = t.elapsed().as_secs_f64();
    Ok(a)
}
