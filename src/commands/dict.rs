//! The arguments of the commands that run a dictionary inside its model (`eval`, `analyze`,
//! `inspect`): which dictionary, and the run, hook, model and device it goes with. Opening them
//! is `saescope_analysis::Session`'s work.

use anyhow::Result;
use saescope_activations::model::device;
use saescope_analysis::SessionSpec;
use std::path::PathBuf;

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
    /// What to open.
    pub fn spec(&self) -> Result<SessionSpec> {
        Ok(SessionSpec {
            dict: self.dict.clone(),
            run: self.run.clone(),
            hook: self.hook.clone(),
            model: self.model.clone(),
            device: device(&self.device)?,
        })
    }
}
