//! A session: a dictionary opened with what it was trained on (its hook, its harvest run, and
//! the model), on a device. Every command that runs a dictionary inside its model starts here
//! (`eval`, `analyze`, `inspect`, the explorer's prompt view, and next steering, explanations
//! and circuits), so each finds the run and model the same way and refuses the same mismatches.

use crate::error::{AnalysisError, Result};
use saescope_activations::assets;
use saescope_activations::hooks::{HookKind, HookPoint};
use saescope_activations::model::{Compute, TextModel};
use saescope_sae::AnyDictionary;
use saescope_store::dictionary::DictConfig;
use saescope_store::features::{FeatureRow, SUMMARY_FILE, read_features};
use saescope_store::manifest::Manifest;
use saescope_store::mirror::Mirror;
use saescope_store::{DictDir, Run};
use std::path::{Path, PathBuf};
use tch::Device;

/// Which dictionary, and the run, hook and model it goes with when they are not found from it.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    /// The dictionary's directory (saescope, SAELens or sparsify layout).
    pub dict: PathBuf,
    /// The harvest run (default: the run it sits in, else the one its `cfg.json` names).
    pub run: Option<PathBuf>,
    /// The hook (default: its `cfg.json`'s).
    pub hook: Option<String>,
    /// The model (default: the run's, else the bundled SmolLM2-135M).
    pub model: Option<PathBuf>,
    /// Where the model and dictionary run.
    pub device: Device,
}

impl SessionSpec {
    /// The dictionary in `dict`, everything else found from it, on the CPU.
    pub fn new(dict: impl Into<PathBuf>) -> SessionSpec {
        SessionSpec {
            dict: dict.into(),
            run: None,
            hook: None,
            model: None,
            device: Device::Cpu,
        }
    }
}

/// A dictionary and where it came from, without the model (enough to export its feature store).
pub struct OpenedDictionary {
    /// Its directory.
    pub dir: DictDir,
    /// Its `cfg.json`.
    pub config: DictConfig,
    /// The dictionary, on the session's device.
    pub dict: AnyDictionary,
    /// The hook it reads.
    pub point: HookPoint,
    /// Whether that hook was named by a Hugging Face module path (sparsify's `layers.6.mlp`)
    /// rather than a TransformerLens name.
    pub module_path: bool,
    /// The harvest run, when one is found.
    pub run: Option<(PathBuf, Run)>,
    /// Where the directory is worked on: itself, or for a dictionary on object storage a local
    /// copy, whose new files [`OpenedDictionary::publish`] uploads.
    pub mirror: Mirror,
}

impl OpenedDictionary {
    /// Opens the dictionary `spec` names with its run; the model is not loaded.
    pub fn open(spec: &SessionSpec) -> Result<OpenedDictionary> {
        let mirror = Mirror::open(&spec.dict)?;
        let dir = DictDir::new(mirror.local());
        let config = dir.read_config()?;
        let bad = |message: String| AnalysisError::Dictionary {
            dir: spec.dict.clone(),
            message,
        };
        let (point, module_path) = hook_point(spec, &config, &dir).map_err(bad)?;
        let hook = point.to_string();
        let run_dir = match &spec.run {
            Some(r) => Some(r.clone()),
            None => DictDir::new(&spec.dict).enclosing_run().or_else(|| {
                config
                    .run()
                    .filter(|r| Manifest::exists_in(r).unwrap_or(false))
                    .map(Path::to_owned)
            }),
        };
        let run = match run_dir {
            Some(r) => {
                let opened = Run::open(&r)?;
                Some((r, opened))
            }
            None => None,
        };
        let d_in = run
            .as_ref()
            .and_then(|(_, r)| r.hook(&hook).ok().map(|(_, h)| h.dim()));
        let dict = AnyDictionary::load(dir.path(), d_in, spec.device)?;
        Ok(OpenedDictionary {
            dir,
            config,
            dict,
            point,
            module_path,
            run,
            mirror,
        })
    }

    /// Uploads what was written into the dictionary's directory (a feature store, an
    /// evaluation) when the directory is on object storage; returns the files sent.
    pub fn publish(&self) -> Result<usize> {
        Ok(self.mirror.push(None)?)
    }

    /// The harvest run's manifest, when the run was found.
    pub fn run(&self) -> Option<&Run> {
        self.run.as_ref().map(|(_, r)| r)
    }
}

/// The hook a dictionary reads: `--hook`, else `cfg.json`'s, else (for sparsify, whose
/// checkpoints keep one folder per hook point and no hook in `cfg.json`) the folder's name.
/// Hugging Face module paths are read as the TransformerLens hooks they equal (and said to be).
fn hook_point(
    spec: &SessionSpec,
    config: &DictConfig,
    dir: &DictDir,
) -> std::result::Result<(HookPoint, bool), String> {
    let (name, source) = match (spec.hook.as_deref(), config.hook()) {
        (Some(h), _) => (h, "--hook"),
        (None, Some(h)) => (h, "cfg.json's hook name"),
        (None, None) => {
            return dir
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|_| dir.sparsify_weights().exists())
                .and_then(|f| HookPoint::parse_dictionary_hook(f).ok())
                .ok_or_else(|| {
                    "cfg.json names no hook (metadata.hook_name) and the folder is not named for one (as sparsify's layers.6 is); pass --hook"
                        .into()
                });
        }
    };
    HookPoint::parse_dictionary_hook(name).map_err(|e| format!("{source}: {e}"))
}

/// Refuses a hook named by a module path where the module's output is not the TransformerLens
/// hook it maps to: Gemma normalises the attention and MLP outputs before adding them to the
/// residual, and hook_attn_out / hook_mlp_out come after that norm, the modules' outputs before.
fn module_path_fits(
    architecture: &str,
    point: HookPoint,
    module_path: bool,
) -> std::result::Result<(), String> {
    if module_path
        && matches!(point.kind, HookKind::AttnOut | HookKind::MlpOut)
        && architecture.starts_with("gemma")
    {
        return Err(format!(
            "the hook was named by a module path, which in {architecture} is the output before the post-norm; saescope's {point} is after it, and it has no hook before it"
        ));
    }
    Ok(())
}

/// A dictionary opened inside the model it reads.
pub struct Session {
    /// The dictionary, its hook and run.
    pub opened: OpenedDictionary,
    /// The model and its tokenizer.
    pub model: TextModel,
    /// Where the model was loaded from.
    pub model_path: PathBuf,
    /// Where both run.
    pub device: Device,
}

impl Session {
    /// Opens the dictionary and loads its model in f32, refusing a hook the model lacks or a
    /// width the dictionary does not read.
    pub fn open(spec: &SessionSpec) -> Result<Session> {
        let opened = OpenedDictionary::open(spec)?;
        let model_path = model_path(spec.model.as_deref(), opened.run());
        let model = TextModel::open(&model_path, spec.device, Compute::F32)?;
        let point = opened.point;
        let bad = |message: String| AnalysisError::Dictionary {
            dir: spec.dict.clone(),
            message,
        };
        if point.layer >= model.model.n_layers() {
            return Err(bad(format!(
                "hook {point} is past the model's {} layers",
                model.model.n_layers()
            )));
        }
        module_path_fits(model.model.architecture(), point, opened.module_path).map_err(bad)?;
        let width: usize = model.model.hook_shape(point.kind).iter().product();
        let d_in = opened.dict.as_dyn().d_in();
        if width != d_in {
            return Err(bad(format!(
                "the dictionary reads {d_in} values per token, {point} of {} has {width}",
                model_path.display()
            )));
        }
        Ok(Session {
            opened,
            model,
            model_path,
            device: spec.device,
        })
    }

    /// The harvest run a pass over the dictionary's hook reads, with the hook's name: an error
    /// asking for `--run` when none was found, or naming the hook when the run lacks it.
    pub fn harvest(&self) -> Result<(&Path, &Run, String)> {
        let opened = &self.opened;
        let Some((run_dir, run)) = &opened.run else {
            return Err(AnalysisError::Dictionary {
                dir: opened.dir.path().to_owned(),
                message: "no harvest run found for this dictionary; pass --run".into(),
            });
        };
        let hook = opened.point.to_string();
        run.hook(&hook)?;
        Ok((run_dir, run, hook))
    }

    /// The shape of one token's value at the dictionary's hook (heads × d_head for
    /// `attn.hook_z`), as a tensor view takes it.
    pub fn hook_shape(&self) -> Vec<i64> {
        self.model
            .model
            .hook_shape(self.opened.point.kind)
            .into_iter()
            .map(|n| n as i64)
            .collect()
    }

    /// The feature store's rows (for quantiles), when the dictionary has been analysed.
    pub fn feature_rows(&self) -> Result<Option<Vec<FeatureRow>>> {
        let store = self.opened.dir.features();
        if store.join(SUMMARY_FILE).exists() {
            Ok(Some(read_features(&store)?))
        } else {
            Ok(None)
        }
    }
}

/// The model to run: `model`, else the run's (when its file is still there), else the bundled one.
pub fn model_path(model: Option<&Path>, run: Option<&Run>) -> PathBuf {
    model
        .map(Path::to_owned)
        .or_else(|| {
            run.and_then(|r| r.manifest().model.file.as_ref().map(PathBuf::from))
                .filter(|p| p.exists())
        })
        .unwrap_or_else(assets::default_model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_module_outputs_are_not_taken_for_hooks_after_its_post_norms() {
        let mlp = HookPoint::parse_dictionary_hook("layers.3.mlp").unwrap().0;
        let resid = HookPoint::parse_dictionary_hook("layers.3").unwrap().0;
        let e = module_path_fits("gemma2", mlp, true).unwrap_err();
        assert!(e.contains("post-norm"), "{e}");
        assert!(
            module_path_fits("gemma3", mlp, false).is_ok(),
            "a TransformerLens name"
        );
        assert!(
            module_path_fits("gemma2", resid, true).is_ok(),
            "the block's output"
        );
        assert!(module_path_fits("llama", mlp, true).is_ok(), "no post-norm");
    }
}
