//! One module per view; each is an `impl Explorer` block that draws the view from the state
//! and records what the user asked for.

mod circuits;
mod explain;
mod feature;
mod features;
mod heads;
mod overview;
mod prompt;
mod scores;
mod steer;

use crate::data::Problem;
use crate::state::Explorer;
use crate::widgets::{loading_ui, problems_ui};
use eframe::egui;

/// What every view shows when no run is open. The window cannot pick a directory itself, so the
/// way in is the command line.
fn no_run(ui: &mut egui::Ui) {
    ui.heading("No run open");
    ui.label("The explorer was started without a run directory. Start it on one:");
    ui.code("saescope explore RUN");
    ui.label("Or build the demo run (in runs/demo), which opens here when it is done:");
    ui.code("saescope demo");
}

impl Explorer {
    /// The store's state when it is not ready to browse; true when it is.
    pub(crate) fn store_ready(&mut self, ui: &mut egui::Ui) -> bool {
        if self.run.is_none() {
            no_run(ui);
            return false;
        }
        let Some(entry) = self.entry().cloned() else {
            ui.heading("No dictionary");
            ui.label("This run has no dictionary yet. Train one with saescope train.");
            return false;
        };
        if let Some((_, l)) = &self.table_loading {
            loading_ui(ui, l);
            return false;
        }
        if let Some(e) = self.table_error() {
            ui.heading("The feature store cannot be read");
            problems_ui(
                ui,
                &[Problem {
                    what: e.to_string(),
                    fix: Some(format!(
                        "saescope analyze --dict {}",
                        entry.dir.path().display()
                    )),
                }],
            );
            if ui.button("Retry").clicked() {
                self.tables.remove(&entry.features_dir());
                self.load_table(&entry.features_dir());
            }
            return false;
        }
        if self.table().is_none() {
            self.load_table(&entry.features_dir());
            return false;
        }
        true
    }
}
