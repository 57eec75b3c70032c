//! `saescope inspect`: the prompt view. Runs the model and a dictionary on one prompt and prints,
//! per token, the most active features with their activation and its quantile in the feature's
//! distribution (from the feature store, when there is one); for attention-output dictionaries,
//! `--feature F --dest P` adds the attribution of F at token P by head and source token.

use super::dict;
use anyhow::{Context, Result, bail};
use saescope_analysis::Session;
use saescope_store::features::{SUMMARY_FILE, read_features};
use saescope_store::prompt::{Attribution, PromptView};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The text to look at.
    pub prompt: String,
    #[command(flatten)]
    pub source: dict::DictArgs,
    /// The feature store for quantiles (default: DICT/features when it exists).
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Features shown per token.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// attn.hook_z dictionaries: attribute this feature by head and source token...
    #[arg(long)]
    pub feature: Option<u32>,
    /// ...at this destination token (position in the prompt, BOS being 0).
    #[arg(long)]
    pub dest: Option<usize>,
    /// Do not put BOS before the prompt.
    #[arg(long)]
    pub no_bos: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Output {
    view: PromptView,
    attribution: Option<Attribution>,
}

pub fn run(a: Args) -> Result<()> {
    let session = Session::open(&a.source.spec()?)?;
    let ids = session.model.prompt_ids(&a.prompt, !a.no_bos)?;
    // The dictionary's own feature store when there is one; a store named with --features must exist.
    let store = match &a.features {
        None => session.feature_rows().with_context(|| {
            format!(
                "reading the feature store in {}",
                session.opened.dir.features().display()
            )
        })?,
        Some(dir) if dir.join(SUMMARY_FILE).exists() => Some(
            read_features(dir)
                .with_context(|| format!("reading the feature store in {}", dir.display()))?,
        ),
        Some(dir) => bail!(
            "{}: no feature store (run `saescope analyze --dict {}`)",
            dir.display(),
            a.source.dict.display()
        ),
    };
    let view = session.prompt_view(&ids, a.top, store.as_deref())?;
    let attribution = match (a.feature, a.dest) {
        (Some(f), Some(d)) => Some(session.attribution(&ids, f, d)?),
        (None, None) => None,
        _ => bail!("--feature and --dest go together"),
    };
    let out = Output { view, attribution };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} on {} tokens{}:",
        out.view.hook,
        ids.len(),
        if store.is_some() {
            " (q: quantile among the feature's activations in the feature store)"
        } else {
            ""
        }
    );
    for t in &out.view.tokens {
        let feats: Vec<String> = t
            .features
            .iter()
            .map(|f| match f.quantile {
                Some(q) => format!("{} {:.2} q{:.2}", f.feature, f.activation, q),
                None => format!("{} {:.2}", f.feature, f.activation),
            })
            .collect();
        println!(
            "{:>4} {:<16} {}",
            t.position,
            format!("{:?}", t.token),
            feats.join("  ")
        );
    }
    if let Some(at) = &out.attribution {
        println!();
        println!(
            "feature {} at token {} {:?}: pre-activation {:.4} = {:.4} from heads and sources + {:.4} constant",
            at.feature,
            at.dest,
            at.tokens[at.dest],
            at.pre_activation,
            at.pre_activation - at.constant,
            at.constant
        );
        let mut cells: Vec<(usize, usize, f32)> = at
            .by_head_source
            .iter()
            .enumerate()
            .flat_map(|(h, row)| row.iter().enumerate().map(move |(s, &v)| (h, s, v)))
            .collect();
        cells.sort_by(|x, y| y.2.abs().total_cmp(&x.2.abs()));
        println!("  largest contributions (head, source token):");
        for (h, s, v) in cells.iter().take(10) {
            println!(
                "    head {h:<2} {:>4} {:<16} {v:+.4}",
                s,
                format!("{:?}", at.tokens[*s])
            );
        }
        let per_head: Vec<String> = at
            .by_head_source
            .iter()
            .enumerate()
            .map(|(h, row)| format!("{h}: {:+.3}", row.iter().sum::<f32>()))
            .collect();
        println!("  by head: {}", per_head.join("  "));
    }
    Ok(())
}
