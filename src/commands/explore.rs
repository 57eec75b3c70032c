//! `saescope explore`: the desktop explorer on a run directory. The window comes from
//! `saescope-gui`; this command gives it a prompt engine that loads the model and dictionary
//! the way `inspect` does, on the explorer's worker thread.

use super::dict::{self, DictArgs};
use super::inspect::prompt_ids;
use anyhow::Result;
use saescope_gui::{EngineFactory, Launch, PromptEngine, Start, View};
use saescope_sae::inspect::{Attribution, PromptView, attention_attribution, prompt_view};
use saescope_store::features::{FeatureRow, SUMMARY_FILE, read_features};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory (or one dictionary's); default: the one opened last.
    pub run: Option<PathBuf>,
    /// The model for the prompt view (default: the run's, else the bundled SmolLM2-135M).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu or cuda, for the prompt view.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Start on this view: overview, features, feature, prompt or heads.
    #[arg(long, value_parser = parse_view)]
    pub view: Option<View>,
    /// Start with this dictionary (its directory name under DIR/dictionaries).
    #[arg(long)]
    pub dictionary: Option<String>,
    /// Start on this feature's page.
    #[arg(long)]
    pub feature: Option<u32>,
    /// Run this prompt in the prompt view at start.
    #[arg(long)]
    pub prompt: Option<String>,
}

fn parse_view(s: &str) -> Result<View, String> {
    Ok(match s {
        "overview" => View::Overview,
        "features" => View::Features,
        "feature" => View::Feature,
        "prompt" => View::Prompt,
        "heads" => View::Heads,
        _ => {
            return Err(format!(
                "`{s}`: expected overview, features, feature, prompt or heads"
            ));
        }
    })
}

/// Whether a window can open here.
pub fn display_available() -> bool {
    std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty())
        || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|d| !d.is_empty())
}

pub fn run(a: Args) -> Result<()> {
    if !display_available() {
        anyhow::bail!(
            "no display (neither DISPLAY nor WAYLAND_DISPLAY is set): run `saescope explore` on a desktop, or under Xvfb"
        );
    }
    let (model, device) = (a.model.clone(), a.device.clone());
    let factory: EngineFactory = Box::new(move |dir: &Path| {
        let args = DictArgs {
            dict: dir.to_owned(),
            run: None,
            hook: None,
            model: model.clone(),
            device: device.clone(),
        };
        Engine::open(&args)
            .map(|e| Box::new(e) as Box<dyn PromptEngine>)
            .map_err(|e| format!("{e:#}"))
    });
    saescope_gui::run(Launch {
        run: a.run,
        engine: Some(factory),
        start: Start {
            view: a.view.or(a.feature.map(|_| View::Feature)),
            dictionary: a.dictionary,
            feature: a.feature,
            prompt: a.prompt,
        },
    })
    .map_err(anyhow::Error::msg)
}

/// The model and one dictionary, with the feature store's rows for quantiles.
struct Engine {
    inm: dict::InModel,
    features: Option<Vec<FeatureRow>>,
}

impl Engine {
    fn open(args: &DictArgs) -> Result<Engine> {
        let inm = dict::open_in_model(args)?;
        let store = inm.opened.dir.join("features");
        let features = if store.join(SUMMARY_FILE).exists() {
            Some(read_features(&store)?)
        } else {
            None
        };
        Ok(Engine { inm, features })
    }

    fn ids(&self, text: &str) -> Result<Vec<u32>, String> {
        prompt_ids(&self.inm.loaded.tokenizer, text, true).map_err(|e| format!("{e:#}"))
    }

    /// A token id's text, as the views show it.
    fn token_name(&self, id: u32) -> String {
        self.inm.loaded.tokenizer.decode(&[id]).unwrap_or_default()
    }
}

impl PromptEngine for Engine {
    fn view(&mut self, text: &str, top: usize) -> Result<PromptView, String> {
        let ids = self.ids(text)?;
        prompt_view(
            &self.inm.loaded.model,
            self.inm.opened.dict.as_dyn(),
            self.inm.opened.point,
            &ids,
            &|i| self.token_name(i),
            top,
            self.features.as_deref(),
        )
        .map_err(|e| e.to_string())
    }

    fn attribution(
        &mut self,
        text: &str,
        feature: u32,
        dest: usize,
    ) -> Result<Attribution, String> {
        let ids = self.ids(text)?;
        attention_attribution(
            &self.inm.loaded.model,
            self.inm.opened.dict.as_dyn(),
            self.inm.opened.point,
            &ids,
            &|i| self.token_name(i),
            feature,
            dest,
        )
        .map_err(|e| e.to_string())
    }
}
