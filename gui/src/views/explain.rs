//! Explaining on the feature page: the feature's explanation, and a button that asks the
//! configured explainer for one in the background.

use crate::state::Explorer;
use eframe::egui::{self, Color32};

impl Explorer {
    /// The explanation line and the "Explain" button for feature `f`.
    pub(crate) fn explain_panel(&mut self, ui: &mut egui::Ui, f: u32) {
        let t = self.table().expect("the page is drawn with its table");
        match (t.explanation(f), &t.explanations_error) {
            (Some(e), _) => {
                ui.label(egui::RichText::new(format!("Explanation: {e}")).italics());
            }
            (None, Some(err)) => {
                ui.label(format!("Explanations cannot be read: {err}"));
            }
            (None, None) => {}
        }
        if let Some(e) = t.effect_explanation(f) {
            ui.label(egui::RichText::new(format!("When pushed: {e}")).italics())
                .on_hover_text("The output-side explanation: what the feature makes the model say when it is pushed on (`saescope explain --output-side`)");
        }
        let Some(explainer) = &self.explainer else {
            return;
        };
        let who = explainer.describe();
        let running = self.explain_job.as_ref().map(|j| j.feature);
        let mut go = false;
        ui.horizontal(|ui| {
            let label = if t.explanation(f).is_some() {
                "Explain again"
            } else {
                "Explain"
            };
            go = ui
                .add_enabled(running.is_none(), egui::Button::new(label))
                .on_hover_text(format!(
                    "Asks {who} for an explanation from this feature's example windows (`saescope examples` draws them)"
                ))
                .clicked();
            match running {
                Some(g) => {
                    ui.add(egui::Spinner::new());
                    ui.label(format!("explaining feature {g} with {who}…"));
                }
                None => {
                    ui.weak(format!("with {who}"));
                }
            }
        });
        let dict = self.entry().map(|d| d.dir.path().to_owned());
        if let Some((d, g, r)) = &self.explained
            && Some(d) == dict.as_ref()
            && *g == f
        {
            match r {
                Ok(x) if x.explanation.is_none() => {
                    ui.colored_label(
                        Color32::from_rgb(220, 140, 40),
                        format!(
                            "No explanation in the answer (a counted failure); it began: {:?}",
                            x.raw.chars().take(160).collect::<String>()
                        ),
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    ui.colored_label(Color32::from_rgb(220, 80, 60), format!("Error: {e}"));
                }
            }
        }
        if go {
            self.explain_feature(f);
        }
    }
}
