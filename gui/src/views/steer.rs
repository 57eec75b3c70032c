//! Steering in the explorer: the feature page's panel that continues a prompt clean and with the
//! feature pushed (added, or clamped to a value), and the side-by-side result it shares with the
//! prompt view's clamp. Generation runs on the worker thread, like the prompt view's passes.

use crate::engine::{Request, SteerPush, Steered};
use crate::error::ExploreError;
use crate::state::{Explorer, SteerFrom};
use eframe::egui::{self, Color32};

impl Explorer {
    /// The steering panel for feature `f`, whose largest activation in the store is `max_act`.
    pub(crate) fn steer_panel(&mut self, ui: &mut egui::Ui, f: u32, max_act: f32) {
        ui.strong("Steering");
        if self.worker.is_none() {
            ui.label("Steering needs the model, which this window was opened without; `saescope explore RUN` opens the run with one.");
            return;
        }
        ui.label("Continues the prompt twice, greedily: as the model would, and with this feature pushed at the dictionary's hook.");
        ui.add(
            egui::TextEdit::singleline(&mut self.steer.text)
                .hint_text("A prompt to continue")
                .desired_width(f32::INFINITY),
        );
        let pending = self.worker.as_ref().is_some_and(|w| w.pending.is_some());
        let mut go = false;
        ui.horizontal(|ui| {
            ui.radio_value(&mut self.steer.clamp, false, "add");
            ui.radio_value(&mut self.steer.clamp, true, "clamp");
            let (range, unit) = if self.steer.clamp {
                (0.0..=(2.0 * max_act).max(1.0), "activation")
            } else {
                (-10.0..=10.0, "× largest activation")
            };
            ui.add(egui::Slider::new(&mut self.steer.strength, range).text(unit));
            go = ui
                .add_enabled(
                    !pending && !self.steer.text.trim().is_empty(),
                    egui::Button::new("Generate"),
                )
                .clicked();
            if pending {
                ui.add(egui::Spinner::new());
                ui.label("generating…");
            }
        });
        if go {
            let push = if self.steer.clamp {
                SteerPush::Clamp(self.steer.strength)
            } else {
                SteerPush::Add(self.steer.strength)
            };
            let request = Request::Steer {
                text: self.steer.text.clone(),
                feature: f,
                push,
                max_new_tokens: self.steer.max_new_tokens,
            };
            self.send_steer(SteerFrom::FeaturePage, request);
        }
        match &self.steer.result {
            Some(Ok(s)) if s.feature != f => {}
            Some(r) => steered_ui(ui, r),
            None => {}
        }
    }
}

/// Clean and steered continuations side by side, each after its prompt, or the error.
pub(crate) fn steered_ui(ui: &mut egui::Ui, r: &Result<Steered, ExploreError>) {
    match r {
        Err(e) => {
            ui.colored_label(Color32::from_rgb(220, 80, 60), format!("Error: {e}"));
        }
        Ok(s) => {
            ui.label(format!(
                "feature {}, {}: mean KL from the clean next-token distributions {:.3} nats",
                s.feature, s.push, s.mean_kl
            ));
            ui.columns(2, |cols| {
                cols[0].strong("clean");
                cols[0].weak(&s.prompt);
                cols[0].label(&s.clean);
                cols[1].strong(format!("steered ({})", s.push));
                cols[1].weak(&s.prompt);
                cols[1].label(&s.steered);
            });
        }
    }
}
