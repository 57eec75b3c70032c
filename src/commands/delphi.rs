//! `saescope export delphi` and `saescope import delphi`: a dictionary's explanations in the
//! layouts delphi and published explanation datasets use, both ways.

use anyhow::{Context, Result, bail};
use saescope_activations::hooks::HookPoint;
use saescope_store::DictDir;
use saescope_store::delphi::{read_delphi, write_delphi};
use saescope_store::explanations::{
    Evidence, ExplanationRow, read_explanations, write_explanations,
};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The dictionary's directory, with its explanations (`saescope explain`).
    #[arg(long)]
    pub dict: PathBuf,
    /// The folder to write: `explanations/<module>_latent<i>.txt` and `<module>_feature.json`.
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
    Ok(())
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
