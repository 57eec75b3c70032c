//! The overview: the run's manifest, its dictionaries with their metrics, and the selected
//! dictionary's training curves.

use crate::state::Explorer;
use crate::widgets::{opt, problems_ui, thousands};
use eframe::egui;
use egui_plot::{Line, Plot, PlotPoints};
use saescope_stats::metrics::Interval;
use saescope_store::dictionary::LogLine;

/// Reads one training curve off a log line.
type Series = fn(&LogLine) -> f64;

impl Explorer {
    pub(crate) fn overview(&mut self, ui: &mut egui::Ui) {
        let Some(run) = &self.run else {
            super::no_run(ui);
            return;
        };
        ui.heading(format!("Run {}", run.dir.display()));
        problems_ui(ui, &run.problems);
        if let Some(m) = &run.manifest {
            egui::Grid::new("manifest").striped(true).show(ui, |ui| {
                ui.label("model");
                ui.label(&m.model.name);
                ui.end_row();
                ui.label("tokens harvested");
                ui.label(thousands(m.total_tokens));
                ui.end_row();
                ui.label("context");
                ui.label(format!("{} tokens", m.context.ctx_len));
                ui.end_row();
                ui.label("hooks");
                ui.label(
                    m.hooks
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                ui.end_row();
            });
        }
        ui.add_space(8.0);
        ui.heading("Dictionaries");
        let dicts = run.dictionaries.clone();
        let mut chosen = None;
        egui::Grid::new("dicts").striped(true).show(ui, |ui| {
            for h in [
                "dictionary",
                "method",
                "hook",
                "latents",
                "FVU",
                "L0",
                "dead",
                "CE recovered",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for (i, d) in dicts.iter().enumerate() {
                if ui.selectable_label(self.dict == Some(i), &d.name).clicked() {
                    chosen = Some(i);
                }
                ui.label(&d.method);
                ui.label(d.hook.as_deref().unwrap_or("?"));
                ui.label(d.latents.map_or("?".into(), thousands));
                ui.label(opt(d.fvu, 4));
                ui.label(opt(d.l0, 1));
                ui.label(opt(d.dead_fraction, 3));
                ui.label(opt(d.ce_loss_recovered, 3));
                ui.end_row();
            }
        });
        if let Some(i) = chosen {
            self.select_dict(i);
        }
        self.score_summary(ui);
        if let Some(d) = self.entry() {
            problems_ui(ui, &d.problems);
            if !d.curve.is_empty() {
                ui.add_space(8.0);
                ui.heading(format!("Training of {}", d.name));
                let series: [(&str, Series); 4] = [
                    ("loss", |p| p.loss),
                    ("FVU", |p| p.fvu),
                    ("L0", |p| p.l0),
                    ("dead fraction", |p| p.dead_fraction),
                ];
                ui.columns(4, |cols| {
                    for (col, (name, get)) in cols.iter_mut().zip(series) {
                        col.label(format!("{name} over tokens"));
                        let pts: PlotPoints =
                            d.curve.iter().map(|p| [p.tokens as f64, get(p)]).collect();
                        Plot::new(format!("curve-{name}"))
                            .height(140.0)
                            .allow_scroll(false)
                            .show(col, |p| p.line(Line::new(name, pts)));
                    }
                });
            }
        }
    }

    /// The selected dictionary's explanation scores summed up: per scorer, its explanations
    /// beside the two controls, so the value they add over another feature's explanation and
    /// over a list of tokens is read off one table.
    fn score_summary(&self, ui: &mut egui::Ui) {
        let Some(t) = self.table() else { return };
        for (evidence, lines) in &t.score_summary {
            ui.add_space(8.0);
            ui.heading(format!(
                "Explanation scores (explanations from {})",
                evidence.name()
            ))
            .on_hover_text(
                "Means over features with 95% bootstrap intervals. Real: each feature's own explanation; shuffled: another feature's, on the same windows; baseline: its most frequent tokens. Measure: simulation's correlation, surprisal's and intervention's nats per token.",
            );
            egui::Grid::new(("score-summary", evidence.name()))
                .striped(true)
                .show(ui, |ui| {
                    for h in [
                        "scorer",
                        "explanation",
                        "features",
                        "failed",
                        "balanced accuracy",
                        "weighted by density",
                        "AUC",
                        "measure",
                    ] {
                        ui.strong(h);
                    }
                    ui.end_row();
                    for l in lines {
                        ui.label(&l.scorer);
                        ui.label(l.control.name());
                        ui.label(l.latents.to_string());
                        ui.label(format!(
                            "{:.1}%",
                            100.0 * l.failed as f64 / l.windows.max(1) as f64
                        ));
                        ui.label(interval(&l.balanced_accuracy));
                        ui.label(interval(&l.balanced_accuracy_weighted));
                        ui.label(interval(&l.auc));
                        ui.label(interval(&l.value));
                        ui.end_row();
                    }
                });
        }
    }
}

/// A mean with its interval, or a dash.
fn interval(i: &Option<Interval>) -> String {
    i.map_or_else(
        || "-".into(),
        |i| format!("{:.3} [{:.3}, {:.3}]", i.mean, i.low, i.high),
    )
}
