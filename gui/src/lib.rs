//! The desktop explorer (`saescope explore`): an egui app that browses a run directory, its
//! dictionaries, their feature stores, prompts and attention heads.
//!
//! It owns only presentation: the state ([`state`]), one module per view ([`views`]), the
//! widgets they share ([`widgets`]) and the frame around them ([`app`]). It reads what the other
//! crates wrote through `saescope-store` alone ([`data`]) and sends prompts to an engine the
//! caller supplies ([`engine`]), on background threads so the window never blocks; an explainer
//! the caller supplies ([`explainer`]) explains a feature from its page. No analysis code lives
//! here, it never writes to the run itself (the caller's explainer records explanations), and it
//! does not link libtorch.

pub mod app;
pub mod data;
pub mod engine;
mod error;
pub mod explainer;
pub mod fixture;
pub mod state;
mod views;
mod widgets;

pub use engine::{EngineFactory, PromptEngine, SteerPush, Steered};
pub use error::ExploreError;
pub use explainer::{Explained, FeatureExplainer};
pub use state::{Explorer, Memory, View};

use std::path::PathBuf;

/// How to start the window.
pub struct Launch {
    /// The run (or dictionary) directory; `None` reopens the last one.
    pub run: Option<PathBuf>,
    /// Opens the model and dictionary for the prompt view; `None` disables prompts.
    pub engine: Option<EngineFactory>,
    /// Explains a feature from its page; `None` hides the button.
    pub explainer: Option<std::sync::Arc<dyn FeatureExplainer>>,
    /// Where to start (default: the overview), and which dictionary, feature or prompt.
    pub start: Start,
}

/// A starting point given on the command line (scripts use it for screenshots).
#[derive(Clone, Debug, Default)]
pub struct Start {
    /// The view to show first.
    pub view: Option<View>,
    /// The dictionary to select (its directory name under `RUN/dictionaries`).
    pub dictionary: Option<String>,
    /// The feature whose page to open.
    pub feature: Option<u32>,
    /// A prompt to run in the prompt view.
    pub prompt: Option<String>,
}

/// Opens the explorer window and returns when it closes.
pub fn run(launch: Launch) -> Result<(), ExploreError> {
    let options = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("saescope explorer")
            .with_inner_size([1280.0, 820.0])
            .with_min_inner_size([640.0, 400.0]),
        ..Default::default()
    };
    eframe::run_native(
        "saescope explorer",
        options,
        Box::new(move |cc| {
            cc.egui_ctx
                .options_mut(|o| o.theme_preference = eframe::egui::ThemePreference::System);
            let mut memory: Memory = cc
                .storage
                .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
                .unwrap_or_default();
            let start = launch.start;
            if start.dictionary.is_some() || start.feature.is_some() {
                memory.run = launch.run.clone().or(memory.run);
                memory.dictionary = start.dictionary.clone().or(memory.dictionary);
                memory.feature = start.feature.or(memory.feature);
            }
            let mut app =
                Explorer::new(launch.run, memory, launch.engine, Some(cc.egui_ctx.clone()));
            if let Some(e) = launch.explainer {
                app = app.with_explainer(e);
            }
            app.start_at(start.view, start.prompt);
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| ExploreError::Window(e.to_string()))
}
