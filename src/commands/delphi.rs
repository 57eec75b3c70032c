//! `saescope export delphi` and `saescope import delphi`: a dictionary's explanations in the
//! layouts delphi and published explanation datasets use, both ways.

use anyhow::{Context, Result, bail};
use saescope_activations::hooks::HookPoint;
use saescope_analysis::{Session, SessionSpec};
use saescope_store::DictDir;
use saescope_store::delphi::{read_delphi, write_delphi, write_delphi_scores};
use saescope_store::examples::{ExampleRow, ExampleSet, read_examples};
use saescope_store::explanations::{
    Evidence, ExplanationRow, read_explanations, write_explanations,
};
use saescope_store::scores::{Control, WindowScore, read_scores, read_window_scores};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The dictionary's directory, with its explanations (`saescope explain`).
    #[arg(long)]
    pub dict: PathBuf,
    /// The folder to write: `explanations/<module>_latent<i>.txt` and `<module>_feature.json`,
    /// and, for explanations that were scored, `scores/<scorer>/<module>_latent<i>.txt`.
    #[arg(long)]
    pub out: PathBuf,
    /// The module name in the file names (default: the hook's module path, e.g. `layers.6`).
    #[arg(long)]
    pub module: Option<String>,
    /// Export the output-side explanations (`explain --output-side`) instead of those made from
    /// activating windows (delphi's layout holds one explanation a latent).
    #[arg(long)]
    pub output_side: bool,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The dictionary whose explanations.parquet receives them.
    #[arg(long)]
    pub dict: PathBuf,
    /// A `<module>_feature.json` file, or a folder of delphi's per-latent explanation files.
    #[arg(long)]
    pub from: PathBuf,
    /// The module name in delphi's file names (default: the hook's module path).
    #[arg(long)]
    pub module: Option<String>,
}

/// The module a dictionary's files are named after: given, else its hook's module path, else
/// its hook's name.
fn module(dict: &DictDir, given: Option<String>) -> Result<String> {
    if let Some(m) = given {
        return Ok(m);
    }
    let cfg = dict.read_config()?;
    let hook = cfg.hook().with_context(|| {
        format!(
            "{}: cfg.json names no hook; pass --module",
            dict.path().display()
        )
    })?;
    Ok(match HookPoint::parse_dictionary_hook(hook) {
        Ok((p, _)) => p.module_path().unwrap_or_else(|| hook.to_owned()),
        Err(_) => hook.to_owned(),
    })
}

pub fn export(a: ExportArgs) -> Result<()> {
    let dict = DictDir::new(&a.dict);
    let table = dict.explanations_table();
    let evidence = if a.output_side {
        Evidence::Effects
    } else {
        Evidence::Activations
    };
    let rows: Vec<ExplanationRow> = read_explanations(&table)?
        .into_iter()
        .filter(|r| r.evidence == evidence)
        .collect();
    let explained: BTreeMap<u32, String> = rows
        .iter()
        .filter_map(|r| r.explanation.clone().map(|e| (r.latent, e)))
        .collect();
    if explained.is_empty() {
        bail!(
            "{}: no explanations to export from {}; run `saescope explain --dict {}{}` first",
            table.display(),
            evidence.name(),
            a.dict.display(),
            if a.output_side { " --output-side" } else { "" }
        );
    }
    let module = module(&dict, a.module)?;
    let w = write_delphi(&a.out, &module, &explained)?;
    println!(
        "wrote {} explanations of {module} in delphi's layout: {} and {} ({} latents without an explanation left out)",
        w.latents,
        w.explanations.display(),
        w.feature_json.display(),
        rows.len() - explained.len()
    );
    for (scorer, latents, dir) in export_scores(&dict, &a.out, &module, evidence, &explained)? {
        println!(
            "wrote {scorer} scores of {latents} latents as delphi's per-latent lists in {}",
            dir.display()
        );
    }
    Ok(())
}

/// Scorers whose window records delphi has a format for: its classifier output, and its
/// embedding output.
const DELPHI_SCORERS: [&str; 4] = ["detection", "fuzz", "fuzz_active", "embedding"];

/// The scores of the explanations exported (`explained`, from `evidence`; scores of an
/// explanation since replaced are left out), as delphi's
/// per-latent score lists: every window with its tokens and activations (from the example
/// sets; the tokens decoded by the run's model when it opens), `distance` its activation bin (0
/// the strongest) or −1 when silent, `activating` the right answer, and the scorer's
/// `prediction`, `probability` and `correct` (the embedding scorer: its `similarity`). The
/// other scorers' records stay in `score_windows.parquet`, which delphi has no format for.
fn export_scores(
    dict: &DictDir,
    out: &Path,
    module: &str,
    evidence: Evidence,
    explained: &BTreeMap<u32, String>,
) -> Result<Vec<(String, usize, PathBuf)>> {
    let current: std::collections::HashSet<(u32, String)> = read_scores(&dict.scores_table())?
        .into_iter()
        .filter(|s| s.control == Control::Real && s.evidence == evidence)
        .filter(|s| explained.get(&s.latent) == Some(&s.explanation))
        .map(|s| (s.latent, s.scorer))
        .collect();
    let windows = read_window_scores(&dict.score_windows_table())?;
    let mine: Vec<&WindowScore> = windows
        .iter()
        .filter(|w| w.control == Control::Real && w.evidence == evidence)
        .filter(|w| current.contains(&(w.latent, w.scorer.clone())))
        .filter(|w| DELPHI_SCORERS.contains(&w.scorer.as_str()))
        .collect();
    if mine.is_empty() {
        return Ok(Vec::new());
    }
    let examples = read_examples(&dict.examples())?;
    let tests: HashMap<(u32, u64), &ExampleRow> = examples
        .iter()
        .filter(|r| r.set == ExampleSet::Test)
        .map(|r| ((r.latent, r.start), r))
        .collect();
    let session = match Session::open(&SessionSpec::new(dict.path())) {
        Ok(s) => Some(s),
        Err(e) => {
            println!("  the scores' windows go without their tokens' text: {e}");
            None
        }
    };
    let mut lists: BTreeMap<&str, BTreeMap<u32, Vec<serde_json::Value>>> = BTreeMap::new();
    for w in mine {
        let window = tests.get(&(w.latent, w.start));
        let str_tokens: Vec<String> = match (window, &session) {
            (Some(r), Some(s)) => r
                .token_ids
                .iter()
                .map(|&t| s.model.tokenizer.decode(&[t]).unwrap_or_default())
                .collect(),
            _ => Vec::new(),
        };
        let mut record = serde_json::json!({
            "str_tokens": str_tokens,
            "activations": window.map(|r| r.acts.clone()).unwrap_or_default(),
            "distance": if w.bin >= 0 { i64::from(w.bin) } else { -1 },
            "activating": w.truth,
        });
        if w.scorer == "embedding" {
            record["similarity"] = serde_json::json!(w.probability);
        } else {
            record["prediction"] = serde_json::json!(w.prediction);
            record["probability"] = serde_json::json!(w.probability);
            record["correct"] = serde_json::json!(w.prediction.map(|p| p == w.truth));
        }
        lists
            .entry(w.scorer.as_str())
            .or_default()
            .entry(w.latent)
            .or_default()
            .push(record);
    }
    lists
        .into_iter()
        .map(|(scorer, per_latent)| {
            let dir = write_delphi_scores(out, module, scorer, &per_latent)?;
            Ok((scorer.to_owned(), per_latent.len(), dir))
        })
        .collect()
}

pub fn import(a: ImportArgs) -> Result<()> {
    let dict = DictDir::new(&a.dict);
    if !dict.exists() {
        bail!(
            "{}: not a dictionary directory (no cfg.json)",
            a.dict.display()
        );
    }
    let module = module(&dict, a.module)?;
    let theirs = read_delphi(&a.from, &module)?;
    let table = dict.explanations_table();
    let mut rows: BTreeMap<(u32, Evidence), ExplanationRow> = read_explanations(&table)?
        .into_iter()
        .map(|r| ((r.latent, r.evidence), r))
        .collect();
    for (latent, text) in &theirs {
        rows.insert(
            (*latent, Evidence::Activations),
            ExplanationRow {
                latent: *latent,
                evidence: Evidence::Activations,
                explanation: Some(text.clone()),
                explainer: format!("delphi import {}", a.from.display()),
                settings: "{}".into(),
                prompt_hash: String::new(),
                examples: 0,
                failures: 0,
                raw: text.clone(),
            },
        );
    }
    write_explanations(&table, &rows.into_values().collect::<Vec<_>>())?;
    println!(
        "imported {} explanations of {module} from {} into {}",
        theirs.len(),
        a.from.display(),
        table.display()
    );
    Ok(())
}
