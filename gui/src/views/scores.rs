//! The feature page's scores: each scorer's verdict on the feature's explanation and on its
//! controls, with the per-bin breakdown (strongest activations first) as a small chart, so a
//! user sees whether an explanation holds for weak activations too.

use crate::state::Explorer;
use eframe::egui;
use egui_plot::{Bar, BarChart, Plot};
use saescope_store::scores::ScoreRow;

/// A rate to two places, or a dash.
fn rate(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// One score in words.
fn line(r: &ScoreRow) -> String {
    let whose = match r.control {
        saescope_store::scores::Control::Real => "its explanation".to_owned(),
        saescope_store::scores::Control::Shuffled => {
            format!("feature {}'s explanation", r.explanation_of)
        }
        saescope_store::scores::Control::Baseline => format!("the baseline {}", r.explanation),
    };
    let measure = match (r.scorer.as_str(), r.value) {
        ("simulation", Some(v)) => format!(", correlation {v:.2}"),
        (_, Some(v)) => format!(", {v:+.3} nats per token"),
        (_, None) => String::new(),
    };
    format!(
        "{} with {whose}: balanced accuracy {}, AUC {}{measure}, {} of {} windows answered",
        r.scorer,
        rate(r.balanced_accuracy),
        rate(r.auc),
        r.valid,
        r.windows
    )
}

impl Explorer {
    pub(crate) fn scores_panel(&self, ui: &mut egui::Ui, f: u32) {
        let t = self.table().expect("the page is drawn with its table");
        if let Some(err) = &t.scores_error {
            ui.label(format!("Scores cannot be read: {err}"));
            return;
        }
        let rows = t.scores(f);
        if rows.is_empty() {
            return;
        }
        ui.strong("Scores (`saescope score`)").on_hover_text(
            "Each scorer on held-out windows, with the feature's explanation and with two controls: another feature's explanation (shuffled) and its most frequent tokens (baseline). The chart: recall (or the scorer's measure, or AUC) by activation bin, strongest first.",
        );
        for (i, r) in rows.iter().enumerate() {
            ui.horizontal(|ui| {
                // Recall per bin for the yes/no scorers; the scorer's own measure per bin where
                // it has one (simulation, surprisal); else AUC per bin (embedding).
                let bins = [&r.bin_recall, &r.bin_value, &r.bin_auc]
                    .into_iter()
                    .find(|b| !b.is_empty())
                    .unwrap_or(&r.bin_auc);
                let bars: Vec<Bar> = bins
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(b, &v)| Bar::new(b as f64, f64::from(v)).width(0.8))
                    .collect();
                Plot::new(("score-bins", f, i))
                    .width(90.0)
                    .height(28.0)
                    .show_axes(false)
                    .show_grid(false)
                    .allow_drag(false)
                    .allow_zoom(false)
                    .allow_scroll(false)
                    .include_y(0.0)
                    .include_y(1.0)
                    .show(ui, |p| p.bar_chart(BarChart::new("by bin", bars)));
                ui.label(line(r));
            });
        }
    }
}
