//! `saescope explore`: the desktop explorer on a run directory. The window comes from
//! `saescope-gui`; this command gives it a prompt engine, a `saescope-analysis` session opened
//! the way `inspect` opens one, on the explorer's worker thread.

use anyhow::Result;
use saescope_activations::model::device;
use saescope_analysis::{Session, SessionSpec};
use saescope_gui::{EngineFactory, ExploreError, Launch, PromptEngine, Start, View};
use saescope_store::features::FeatureRow;
use saescope_store::prompt::{Attribution, PromptView};
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
    let (model, device) = (a.model.clone(), device(&a.device)?);
    let factory: EngineFactory = Box::new(move |dir: &Path| {
        let spec = SessionSpec {
            model: model.clone(),
            device,
            ..SessionSpec::new(dir)
        };
        Engine::open(&spec)
            .map(|e| Box::new(e) as Box<dyn PromptEngine>)
            .map_err(|e| ExploreError::Engine(format!("{e:#}")))
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
    })?;
    Ok(())
}

/// The model and one dictionary, with the feature store's rows for quantiles.
struct Engine {
    session: Session,
    features: Option<Vec<FeatureRow>>,
}

impl Engine {
    fn open(spec: &SessionSpec) -> Result<Engine> {
        let session = Session::open(spec)?;
        let features = session.feature_rows()?;
        Ok(Engine { session, features })
    }

    fn ids(&self, text: &str) -> Result<Vec<u32>, ExploreError> {
        self.session
            .model
            .prompt_ids(text, true)
            .map_err(|e| ExploreError::Engine(e.to_string()))
    }
}

impl PromptEngine for Engine {
    fn view(&mut self, text: &str, top: usize) -> Result<PromptView, ExploreError> {
        let ids = self.ids(text)?;
        self.session
            .prompt_view(&ids, top, self.features.as_deref())
            .map_err(|e| ExploreError::Engine(e.to_string()))
    }

    fn attribution(
        &mut self,
        text: &str,
        feature: u32,
        dest: usize,
    ) -> Result<Attribution, ExploreError> {
        let ids = self.ids(text)?;
        self.session
            .attribution(&ids, feature, dest)
            .map_err(|e| ExploreError::Engine(e.to_string()))
    }
}
