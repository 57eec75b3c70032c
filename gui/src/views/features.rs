//! The feature list: search, sort, a density filter, and a table that opens feature pages.

use crate::state::{Explorer, SortBy};
use crate::widgets::{density_bars, show_token};
use eframe::egui::{self, Sense};
use egui_extras::{Column, TableBuilder};

impl Explorer {
    pub(crate) fn features_view(&mut self, ui: &mut egui::Ui) {
        if !self.store_ready(ui) {
            return;
        }
        let t = self.table().expect("ready");
        if self.list.dirty {
            self.list.refresh(&t);
        }
        ui.horizontal(|ui| {
            ui.label("Search");
            let r = ui.add(
                egui::TextEdit::singleline(&mut self.list.search)
                    .hint_text("top logit token, explanation or feature number")
                    .desired_width(240.0),
            );
            if r.changed() {
                self.list.dirty = true;
            }
            ui.separator();
            ui.label("Sort");
            for (s, name) in [
                (SortBy::Feature, "by feature"),
                (SortBy::Density, "by density"),
                (SortBy::MaxAct, "by max activation"),
                (SortBy::TopLogit, "by top logit"),
                (SortBy::Score, "by score"),
            ] {
                if ui.selectable_label(self.list.sort == s, name).clicked() {
                    if self.list.sort == s {
                        self.list.descending = !self.list.descending;
                    } else {
                        self.list.sort = s;
                        self.list.descending = s != SortBy::Feature;
                    }
                    self.list.dirty = true;
                }
            }
            let mut on = self.list.min_score.is_some();
            if ui
                .checkbox(&mut on, "score at least")
                .on_hover_text("The mean over scorers of its explanation's AUC (balanced accuracy where there is none)")
                .changed()
            {
                self.list.min_score = on.then_some(0.5);
                self.list.dirty = true;
            }
            if let Some(min) = &mut self.list.min_score
                && ui
                    .add(egui::DragValue::new(min).range(0.0..=1.0).speed(0.01))
                    .changed()
            {
                self.list.dirty = true;
            }
            if self.list.density.is_some() && ui.button("Clear density filter").clicked() {
                self.list.density = None;
                self.list.dirty = true;
            }
        });
        // The log10-density histogram: click a bar to keep only that range.
        let hist = &t.summary.log10_density_histogram;
        ui.label(format!(
            "{} of {} features shown; log10 density across features (click a bar to filter):",
            self.list.rows.len(),
            t.len()
        ));
        if let Some(range) = density_bars(ui, hist, self.list.density) {
            self.list.density = Some(range);
            self.list.dirty = true;
        }
        if self.list.dirty {
            self.list.refresh(&t);
        }
        let rows = self.list.rows.clone();
        let cursor = self.list.cursor;
        let mut open = None;
        TableBuilder::new(ui)
            .striped(true)
            .sense(Sense::click())
            .column(Column::exact(80.0))
            .column(Column::exact(100.0))
            .column(Column::exact(90.0))
            .column(Column::exact(90.0))
            .column(Column::exact(260.0))
            .column(Column::exact(60.0))
            .column(Column::remainder())
            .scroll_to_row(cursor, None)
            .header(20.0, |mut h| {
                for name in [
                    "feature",
                    "density",
                    "max act",
                    "mean act",
                    "top logit tokens",
                    "score",
                    "explanation",
                ] {
                    h.col(|ui| {
                        ui.strong(name);
                    });
                }
            })
            .body(|body| {
                body.rows(20.0, rows.len(), |mut row| {
                    let i = row.index();
                    let f = rows[i];
                    let r = &t.features[f as usize];
                    row.set_selected(i == cursor);
                    row.col(|ui| {
                        ui.label(format!("#{f}"));
                    });
                    row.col(|ui| {
                        ui.label(format!("{:.2e}", r.density));
                    });
                    row.col(|ui| {
                        ui.label(format!("{:.3}", r.max_act));
                    });
                    row.col(|ui| {
                        ui.label(format!("{:.3}", r.mean_act));
                    });
                    row.col(|ui| {
                        ui.label(
                            r.logit_top_tokens
                                .iter()
                                .take(5)
                                .map(|s| show_token(s))
                                .collect::<Vec<_>>()
                                .join("  "),
                        );
                    });
                    row.col(|ui| {
                        if let Some(s) = t.score(f) {
                            ui.label(format!("{s:.2}"));
                        }
                    });
                    row.col(|ui| match (t.explanation(f), t.effect_explanation(f)) {
                        (Some(e), _) => {
                            ui.label(e);
                        }
                        // Only an output-side explanation: shown as one.
                        (None, Some(o)) => {
                            ui.label(egui::RichText::new(format!("pushed: {o}")).italics());
                        }
                        (None, None) => {}
                    });
                    if row.response().clicked() {
                        open = Some((i, f));
                    }
                });
            });
        if let Some((i, f)) = open {
            self.list.cursor = i;
            self.open_feature(f);
        }
    }
}
