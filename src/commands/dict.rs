//! Opening a trained dictionary with what it was trained on: its hook, its harvest run and the
//! model, for the commands that run a dictionary inside the model (`eval`, `analyze`,
//! `inspect`), which share their arguments for it ([`DictArgs`]).

use anyhow::{Context, Result, bail};
use saescope_activations::hooks::HookPoint;
use saescope_sae::AnyDictionary;
use saescope_sae::dictionary::Provenance;
use saescope_store::Run;
use saescope_store::manifest::MANIFEST_FILE;
use std::path::{Path, PathBuf};

/// Which dictionary, and the run and model it goes with.
#[derive(clap::Args, Debug, Clone)]
pub struct DictArgs {
    /// The dictionary's directory (saescope, SAELens or sparsify layout).
    #[arg(long)]
    pub dict: PathBuf,
    /// The harvest run it was trained on (default: found from the dictionary).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// The hook (default: the dictionary's cfg.json).
    #[arg(long)]
    pub hook: Option<String>,
    /// The model (default: the run's, else the bundled SmolLM2-135M).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DictArgs {
    /// A dictionary of `run`, everything else found from it, on the CPU.
    pub fn of_run(dict: PathBuf, run: PathBuf) -> Self {
        DictArgs {
            dict,
            run: Some(run),
            hook: None,
            model: None,
            device: "cpu".into(),
        }
    }
}

/// A dictionary opened beside the model it reads.
pub struct InModel {
    pub opened: Opened,
    pub loaded: super::harvest::Loaded,
    pub model_path: PathBuf,
    pub device: tch::Device,
}

/// Opens the dictionary and loads its model, refusing a hook the model lacks or a width the
/// dictionary does not read.
pub fn open_in_model(a: &DictArgs) -> Result<InModel> {
    let device = super::harvest::device(&a.device)?;
    let opened = open(&a.dict, a.hook.as_deref(), a.run.as_deref(), device)?;
    let model_path = model_path(a.model.as_deref(), opened.run.as_ref().map(|(_, r)| r));
    let loaded = super::harvest::load_model(&model_path, device, "f32")?;
    let point = opened.point;
    if point.layer >= loaded.model.n_layers() {
        bail!(
            "{}: hook {point} is past the model's {} layers",
            a.dict.display(),
            loaded.model.n_layers()
        );
    }
    let width: usize = loaded.model.hook_shape(point.kind).iter().product();
    let d_in = opened.dict.as_dyn().d_in();
    if width != d_in {
        bail!(
            "{}: the dictionary reads {d_in} values per token, {point} of {} has {width}",
            a.dict.display(),
            model_path.display()
        );
    }
    Ok(InModel {
        opened,
        loaded,
        model_path,
        device,
    })
}

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
