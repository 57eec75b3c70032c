//! Opening a trained dictionary with what it was trained on: its hook, its harvest run and the
//! model, for the commands that run a dictionary inside the model (`eval`, `analyze`,
//! `inspect`).

use anyhow::{Context, Result, bail};
use saescope_activations::hooks::HookPoint;
use saescope_sae::AnyDictionary;
use saescope_sae::dictionary::Provenance;
use saescope_store::Run;
use saescope_store::manifest::MANIFEST_FILE;
use std::path::{Path, PathBuf};

/// A dictionary and where it came from.
pub struct Opened {
    pub dir: PathBuf,
    pub dict: AnyDictionary,
    pub point: HookPoint,
    /// The harvest run, when one can be found.
    pub run: Option<(PathBuf, Run)>,
}

/// Opens the dictionary in `dir`. The hook comes from `hook` or the dictionary's `cfg.json`;
/// the run from `run`, else the directory two levels up (saescope's `RUN/dictionaries/NAME`),
/// else the run recorded in `cfg.json`.
pub fn open(
    dir: &Path,
    hook: Option<&str>,
    run: Option<&Path>,
    device: tch::Device,
) -> Result<Opened> {
    if !dir.join(saescope_sae::dictionary::CFG_FILE).exists() {
        bail!(
            "{}: not a dictionary directory (no cfg.json; `saescope train` writes one)",
            dir.display()
        );
    }
    let prov = Provenance::read(dir)?;
    let hook = match hook.map(str::to_owned).or(prov.hook) {
        Some(h) => h,
        None => bail!(
            "{}: cfg.json names no hook (metadata.hook_name); pass --hook",
            dir.display()
        ),
    };
    let point: HookPoint = hook
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let run_dir = match run {
        Some(r) => Some(r.to_owned()),
        None => {
            let parent = dir.parent().and_then(Path::parent);
            parent
                .filter(|p| p.join(MANIFEST_FILE).exists())
                .map(Path::to_owned)
                .or(prov.run.filter(|r| r.join(MANIFEST_FILE).exists()))
        }
    };
    let run = match run_dir {
        Some(r) => {
            let opened = Run::open(&r).with_context(|| format!("opening run {}", r.display()))?;
            Some((r, opened))
        }
        None => None,
    };
    let d_in = run
        .as_ref()
        .and_then(|(_, r)| r.hook(&hook).ok().map(|(_, h)| h.dim()));
    let dict = AnyDictionary::load(dir, d_in, device)
        .with_context(|| format!("loading the dictionary in {}", dir.display()))?;
    Ok(Opened {
        dir: dir.to_owned(),
        dict,
        point,
        run,
    })
}

/// The model to run: `model`, else the run's, else the bundled one.
pub fn model_path(model: Option<&Path>, run: Option<&Run>) -> PathBuf {
    model
        .map(Path::to_owned)
        .or_else(|| {
            run.and_then(|r| r.manifest().model.file.as_ref().map(PathBuf::from))
                .filter(|p| p.exists())
        })
        .unwrap_or_else(super::harvest::default_model)
}
