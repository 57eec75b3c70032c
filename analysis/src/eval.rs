//! `eval`: a dictionary spliced into its model over held-out text. By default the text is the
//! run's corpus after the contexts the run harvested, so no training text is scored. The report
//! is written to the dictionary's `eval.json`.

use crate::error::{AnalysisError, Result};
use crate::session::Session;
use crate::splice::{SpliceAccumulator, SpliceOptions, splice_batch};
use saescope_activations::corpus::CorpusSource;
use saescope_activations::harvest::Packer;
use saescope_store::Run;
use saescope_store::dictionary::EvalReport;
use std::path::PathBuf;
use tch::Tensor;

/// How to evaluate.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Text to evaluate on: `brown`, `shakespeare` or a path (default: the run's corpus,
    /// continuing after the contexts the run harvested).
    pub corpus: Option<String>,
    /// The JSONL field or Parquet column holding the text.
    pub text_column: String,
    /// Tokens to evaluate (whole contexts; BOS positions count).
    pub tokens: u64,
    /// Contexts per forward pass.
    pub batch_size: usize,
    /// Context length (default: the run's, else 128).
    pub ctx_len: Option<usize>,
    /// `attn.hook_z` only: ablate this head alone (the splice still replaces every head).
    pub head: Option<usize>,
    /// Splice and score BOS positions too.
    pub include_bos: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            corpus: None,
            text_column: "text".into(),
            tokens: 16_384,
            batch_size: 8,
            ctx_len: None,
            head: None,
            include_bos: false,
        }
    }
}

/// Where the evaluated text comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalText {
    /// The corpus, as `CorpusSource::parse` reads it.
    pub corpus: String,
    /// Contexts of it to pass over first: those the run harvested.
    pub skip: u64,
}

impl EvalText {
    /// The corpus asked for, from its start; else the run's corpus after every context the run
    /// harvested (its last, possibly short, one included), so that no scored token was
    /// harvested and none was trained on; else the Brown Corpus.
    pub fn choose(corpus: Option<&str>, run: Option<&Run>, ctx_len: usize) -> EvalText {
        match (corpus, run) {
            (Some(c), _) => EvalText {
                corpus: c.to_owned(),
                skip: 0,
            },
            (None, Some(r)) => {
                let m = r.manifest();
                EvalText {
                    corpus: m
                        .corpus
                        .sources
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "brown".into()),
                    skip: m.total_tokens.div_ceil(ctx_len as u64),
                }
            }
            (None, None) => EvalText {
                corpus: "brown".into(),
                skip: 0,
            },
        }
    }

    /// Moves `packer` (over this corpus) past the harvested contexts.
    pub fn skip_harvested(&self, packer: &mut Packer<'_>) -> Result<()> {
        for _ in 0..self.skip {
            if packer.next_context()?.is_none() {
                return Err(AnalysisError::Data(format!(
                    "the corpus `{}` has no text beyond the {} contexts the run harvested; pass --corpus",
                    self.corpus, self.skip
                )));
            }
        }
        Ok(())
    }
}

/// A finished evaluation.
pub struct Evaluation {
    /// The figures.
    pub report: EvalReport,
    /// The corpus evaluated on, as given or taken from the run.
    pub corpus: String,
    /// Where the report was written.
    pub path: PathBuf,
}

/// Evaluates the session's dictionary and writes `eval.json`; `progress` gets (tokens done,
/// tokens planned).
pub fn evaluate(
    s: &Session,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Evaluation> {
    let run = s.opened.run();
    let point = s.opened.point;
    let dict = s.opened.dict.as_dyn();
    if let Some(h) = opts.head {
        let heads = s.model.model.hook_shape(point.kind)[0];
        if point.kind != saescope_activations::hooks::HookKind::AttnZ || h >= heads {
            return Err(AnalysisError::Config(format!(
                "--head {h}: needs an attn.hook_z dictionary and a head below {heads}"
            )));
        }
    }
    let ctx_len = opts
        .ctx_len
        .or(run.map(|r| r.manifest().context.ctx_len as usize))
        .unwrap_or(128);
    let source = EvalText::choose(opts.corpus.as_deref(), run, ctx_len);
    let corpus = CorpusSource::parse(&source.corpus, &opts.text_column)?;
    let mut packer = Packer::new(&corpus, &s.model.tokenizer, ctx_len)?;
    source.skip_harvested(&mut packer)?;
    let splice = SpliceOptions {
        point,
        exclude_bos: !opts.include_bos,
        head: opts.head,
    };
    let mut acc = SpliceAccumulator::new(dict.d_in(), dict.n_latents());
    let want = opts.tokens.div_ceil(ctx_len as u64);
    let planned = want * ctx_len as u64;
    progress(0, planned);
    let mut batch: Vec<i64> = Vec::new();
    let mut in_batch = 0usize;
    let mut taken = 0u64;
    loop {
        let next = if taken < want {
            packer.next_context()?
        } else {
            None
        };
        let full = next.as_ref().is_some_and(|c| c.ids.len() == ctx_len);
        if let Some(c) = next.filter(|_| full) {
            batch.extend_from_slice(&c.ids);
            in_batch += 1;
            taken += 1;
        }
        if in_batch > 0 && (in_batch == opts.batch_size || !full) {
            let ids = Tensor::from_slice(&batch).view([in_batch as i64, ctx_len as i64]);
            splice_batch(&s.model.model, dict, &ids, &splice, &mut acc)?;
            progress(acc.contexts() * ctx_len as u64, planned);
            batch.clear();
            in_batch = 0;
        }
        if !full {
            break;
        }
    }
    if acc.contexts() == 0 {
        return Err(AnalysisError::Data(format!(
            "the corpus `{}` gave no full context of {ctx_len} tokens to evaluate on",
            source.corpus
        )));
    }
    let report = acc.finish(&splice);
    let path = s.opened.dir.eval();
    let text = serde_json::to_string_pretty(&report).expect("json");
    saescope_store::write_atomic(&path, text.as_bytes())?;
    s.opened.publish()?;
    Ok(Evaluation {
        report,
        corpus: source.corpus,
        path,
    })
}
