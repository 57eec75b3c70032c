//! Explaining a feature from its page: the explainer the caller supplies (the bundled model or a
//! server, as `saescope explain` runs them), and the background job that runs it so the window
//! never waits. The explainer writes the dictionary's `explanations.parquet`; the explorer only
//! reads it back.

use crate::error::{ExploreError, panic_text};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};

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

/// An explain job running on its own thread.
pub struct ExplainJob {
    /// The dictionary.
    pub dict: PathBuf,
    /// The feature being explained.
    pub feature: u32,
    rx: Receiver<Result<Explained, ExploreError>>,
}

impl ExplainJob {
    /// Starts explaining `feature` of `dict`; `ctx` is repainted when the answer is there.
    pub fn start(
        explainer: Arc<dyn FeatureExplainer>,
        dict: &Path,
        feature: u32,
        ctx: Option<eframe::egui::Context>,
    ) -> ExplainJob {
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dict.to_owned();
        std::thread::Builder::new()
            .name("saescope-explore-explain".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    explainer.explain(&d, feature)
                }))
                .unwrap_or_else(|payload| {
                    let why = panic_text(&*payload).map_or(String::new(), |m| format!(": {m}"));
                    Err(ExploreError::Worker(format!("the explainer panicked{why}")))
                });
                let _ = tx.send(r);
                if let Some(ctx) = ctx {
                    ctx.request_repaint();
                }
            })
            .expect("spawning a thread");
        ExplainJob {
            dict: dict.to_owned(),
            feature,
            rx,
        }
    }

    /// The answer, once it is there.
    pub fn poll(&self) -> Option<Result<Explained, ExploreError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(ExploreError::Worker(
                "the explain job stopped without an answer".into(),
            ))),
        }
    }

    /// Waits for the answer (tests).
    pub fn wait(&self) -> Result<Explained, ExploreError> {
        self.rx.recv().unwrap_or_else(|_| {
            Err(ExploreError::Worker(
                "the explain job stopped without an answer".into(),
            ))
        })
    }
}
