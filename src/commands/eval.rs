//! `saescope eval`: does a dictionary stand in for the model? Splices its reconstruction into
//! the forward pass over held-out text and reports CE-loss recovered, KL and the reconstruction
//! metrics, written to `DICT/eval.json`.

use super::{dict, harvest};
use crate::progress;
use anyhow::{Context, Result, bail};
use saescope_activations::harvest::Packer;
use saescope_sae::splice::{SpliceAccumulator, SpliceOptions, SpliceReport, splice_batch};
use tch::Tensor;

pub const EVAL_FILE: &str = "eval.json";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub source: dict::DictArgs,
    /// Text to evaluate on: brown, shakespeare or a path (default: the run's corpus, continuing
    /// after the contexts the run harvested, so no training text is scored).
    #[arg(long)]
    pub corpus: Option<String>,
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Tokens to evaluate (whole contexts; BOS positions count).
    #[arg(long, default_value_t = 16_384)]
    pub tokens: u64,
    /// Contexts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Context length (default: the run's, else 128).
    #[arg(long)]
    pub ctx_len: Option<usize>,
    /// attn.hook_z only: ablate this head alone (the splice still replaces every head).
    #[arg(long)]
    pub head: Option<usize>,
    /// Splice and score BOS positions too (left out by default, as in training).
    #[arg(long)]
    pub include_bos: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dict::InModel {
        opened,
        loaded,
        model_path,
        ..
    } = dict::open_in_model(&a.source)?;
    let run = opened.run.as_ref().map(|(_, r)| r);
    let point = opened.point;
    let d_in = opened.dict.as_dyn().d_in();
    if let Some(h) = a.head {
        let heads = loaded.model.hook_shape(point.kind)[0];
        if point.kind != saescope_activations::hooks::HookKind::AttnZ || h >= heads {
            bail!("--head {h}: needs an attn.hook_z dictionary and a head below {heads}");
        }
    }
    let ctx_len = a
        .ctx_len
        .or(run.map(|r| r.manifest().context.ctx_len as usize))
        .unwrap_or(128);
    // The run's corpus, after what it harvested; or the corpus asked for, from its start.
    let (spec, skip) = match (&a.corpus, run) {
        (Some(c), _) => (c.clone(), 0u64),
        (None, Some(r)) => {
            let m = r.manifest();
            let spec = m
                .corpus
                .sources
                .first()
                .cloned()
                .unwrap_or_else(|| "brown".into());
            (spec, m.total_tokens.div_ceil(ctx_len as u64))
        }
        (None, None) => ("brown".into(), 0),
    };
    let corpus = harvest::corpus_source(&spec, &a.text_column)?;
    let mut packer = Packer::new(&corpus, &loaded.tokenizer, ctx_len)?;
    for _ in 0..skip {
        if packer.next_context()?.is_none() {
            bail!(
                "the corpus `{spec}` has no text beyond the {skip} contexts the run harvested; pass --corpus"
            );
        }
    }

    let opts = SpliceOptions {
        point,
        exclude_bos: !a.include_bos,
        head: a.head,
    };
    let dict = opened.dict.as_dyn();
    let mut acc = SpliceAccumulator::new(d_in, dict.n_latents());
    let want = a.tokens.div_ceil(ctx_len as u64);
    let pb = progress::bar(want * ctx_len as u64, "evaluating", "tokens");
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
        if full {
            batch.extend_from_slice(&next.expect("checked").ids);
            in_batch += 1;
            taken += 1;
        }
        if in_batch > 0 && (in_batch == a.batch_size || !full) {
            let ids = Tensor::from_slice(&batch).view([in_batch as i64, ctx_len as i64]);
            splice_batch(&loaded.model, dict, &ids, &opts, &mut acc)
                .with_context(|| format!("running {}", model_path.display()))?;
            pb.set_position(acc.contexts() * ctx_len as u64);
            batch.clear();
            in_batch = 0;
        }
        if !full {
            break;
        }
    }
    pb.finish_and_clear();
    if acc.contexts() == 0 {
        bail!("the corpus `{spec}` gave no full context of {ctx_len} tokens to evaluate on");
    }
    let report = acc.finish(&opts);
    let path = opened.dir.join(EVAL_FILE);
    let text = serde_json::to_string_pretty(&report)?;
    saescope_store::write_atomic(&path, text.as_bytes())?;
    if a.json {
        println!("{text}");
    } else {
        print_report(&report, &spec);
        println!("written to {}", path.display());
    }
    Ok(())
}

pub fn print_report(r: &SpliceReport, corpus: &str) {
    println!(
        "{} over {} contexts of {corpus} ({} predictions{}):",
        r.hook,
        r.contexts,
        r.predictions,
        if r.exclude_bos {
            ", BOS kept clean"
        } else {
            ""
        }
    );
    println!(
        "  CE loss  clean {:.4}  spliced {:.4}  ablated {:.4}  recovered {:.4}  delta {:+.4}",
        r.ce_clean, r.ce_spliced, r.ce_ablated, r.ce_loss_recovered, r.delta_lm_loss
    );
    println!(
        "  KL       spliced {:.4}  ablated {:.4}  score {:.4}",
        r.kl_spliced, r.kl_ablated, r.kl_div_score
    );
    let m = &r.reconstruction;
    println!(
        "  recon    FVU {:.4}  explained variance {:.4} (legacy {:.4})  L0 {:.2}  cos {:.4}",
        m.fvu, m.explained_variance, m.explained_variance_legacy, m.l0, m.cos_sim
    );
}
