//! Explaining a feature from its page: the explainer the caller supplies (the bundled model or a
//! server, as `saescope explain` runs them), and the background job that runs it so the window
//! never waits. The explainer writes the dictionary's `explanations.parquet`; the explorer only
//! reads it back.

use crate::data::Loading;
use crate::error::{ExploreError, panic_text};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Explains one feature of a dictionary from its stored example windows.
pub trait FeatureExplainer: Send + Sync {
    /// Who explains, shown beside the button (e.g. `the bundled SmolLM2-135M-Instruct`).
    fn describe(&self) -> String;
    /// Explains `feature` of the dictionary in `dict` and records the answer in the
    /// dictionary's explanations table, as `saescope explain` does.
    fn explain(&self, dict: &Path, feature: u32) -> Result<Explained, ExploreError>;
}

/// What one explain job gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Explained {
    /// The feature.
    pub feature: u32,
    /// The explanation; `None` when the answer held none (a counted failure).
    pub explanation: Option<String>,
    /// The explainer's answer as received.
    pub raw: String,
}

/// An explain job running on its own thread (a [`Loading`] with the feature it is for).
pub struct ExplainJob {
    /// The dictionary.
    pub dict: PathBuf,
    /// The feature being explained.
    pub feature: u32,
    work: Loading<Explained>,
}

impl ExplainJob {
    /// Starts explaining `feature` of `dict`; `ctx` is repainted when the answer is there.
    pub fn start(
        explainer: Arc<dyn FeatureExplainer>,
        dict: &Path,
        feature: u32,
        ctx: Option<eframe::egui::Context>,
    ) -> ExplainJob {
        let d = dict.to_owned();
        let work = Loading::start(format!("explaining feature {feature}"), ctx, move |_, _| {
            // Caught here, not by the loader, so the panic's own message reaches the page.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                explainer.explain(&d, feature)
            }))
            .unwrap_or_else(|payload| {
                let why = panic_text(&*payload).map_or(String::new(), |m| format!(": {m}"));
                Err(ExploreError::Worker(format!("the explainer panicked{why}")))
            })
        });
        ExplainJob {
            dict: dict.to_owned(),
            feature,
            work,
        }
    }

    /// The answer, once it is there.
    pub fn poll(&self) -> Option<Result<Explained, ExploreError>> {
        self.work.poll()
    }

    /// Waits for the answer (tests).
    pub fn wait(&self) -> Result<Explained, ExploreError> {
        self.work.wait()
    }
}
