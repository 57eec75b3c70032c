//! `saescope eval`: does a dictionary stand in for the model? Splices its reconstruction into
//! the forward pass over held-out text and reports CE-loss recovered, KL and the reconstruction
//! metrics, written to `DICT/eval.json`.

use super::dict;
use crate::progress::Tracker;
use anyhow::Result;
use saescope_analysis::Session;
use saescope_analysis::eval::{EvalOptions, Evaluation, evaluate};
use saescope_store::dictionary::EvalReport;

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
    let session = Session::open(&a.source.spec()?)?;
    let opts = EvalOptions {
        corpus: a.corpus.clone(),
        text_column: a.text_column.clone(),
        tokens: a.tokens,
        batch_size: a.batch_size,
        ctx_len: a.ctx_len,
        head: a.head,
        include_bos: a.include_bos,
    };
    let e = eval(&session, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e.report)?);
    } else {
        print_report(&e.report, &e.corpus);
        println!("written to {}", e.path.display());
    }
    Ok(())
}

/// Evaluates with a progress bar (the demo's evaluation too).
pub fn eval(session: &Session, opts: &EvalOptions) -> Result<Evaluation> {
    let mut bar = Tracker::new("evaluating", "tokens");
    let e = evaluate(session, opts, &mut |done, total| bar.update(done, total))?;
    bar.finish();
    Ok(e)
}

pub fn print_report(r: &EvalReport, corpus: &str) {
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
