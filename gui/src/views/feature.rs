//! A feature's page: its explanation and its scores, statistics, histograms, logit effects, neighbours, head shares, the
//! steering panel, and its top and interval contexts.

use crate::data::Problem;
use crate::state::Explorer;
use crate::widgets::{context_ui, problems_ui, show_token, thousands};
use eframe::egui;
use egui_plot::{Bar, BarChart, Plot};
use saescope_store::features::ContextKind;

impl Explorer {
    pub(crate) fn feature_view(&mut self, ui: &mut egui::Ui) {
        if !self.store_ready(ui) {
            return;
        }
        let t = self.table().expect("ready");
        let Some(f) = self.current_feature() else {
            ui.heading("No feature open");
            ui.label("Pick one in the Features list.");
            return;
        };
        let Some(r) = t.feature(f).cloned() else {
            ui.heading(format!("Feature {f} is not in this store"));
            return;
        };
        self.ensure_page();
        let mut go = None;
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.heading(format!("Feature {f}"));
            self.explain_panel(ui, f);
            self.scores_panel(ui, f);
            ui.label(format!(
                "fires on {} of {} tokens (density {:.3e}); mean {:.3}, max {:.3}",
                thousands(r.count),
                thousands(t.summary.tokens),
                r.density,
                r.mean_act,
                r.max_act
            ));
            ui.columns(2, |cols| {
                cols[0].label("Activation histogram (nonzero)");
                let w = r.act_hist_max as f64 / r.act_hist.len().max(1) as f64;
                let bars: Vec<Bar> = r
                    .act_hist
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| Bar::new((i as f64 + 0.5) * w, c as f64).width(w))
                    .collect();
                Plot::new("act-hist")
                    .height(120.0)
                    .allow_scroll(false)
                    .show(&mut cols[0], |p| {
                        p.bar_chart(BarChart::new("activations", bars))
                    });
                cols[1].label("Logit effect over the vocabulary");
                let n = r.logit_hist.len().max(1);
                let w = (r.logit_hist_max - r.logit_hist_min) as f64 / n as f64;
                let bars: Vec<Bar> = r
                    .logit_hist
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        Bar::new(r.logit_hist_min as f64 + (i as f64 + 0.5) * w, c as f64).width(w)
                    })
                    .collect();
                Plot::new("logit-hist")
                    .height(120.0)
                    .allow_scroll(false)
                    .show(&mut cols[1], |p| p.bar_chart(BarChart::new("logits", bars)));
            });
            ui.columns(3, |cols| {
                cols[0].strong("Promoted tokens");
                for (tok, v) in r.logit_top_tokens.iter().zip(&r.logit_top_values) {
                    cols[0].label(format!("{}  {:+.3}", show_token(tok), v));
                }
                cols[1].strong("Suppressed tokens");
                for (tok, v) in r.logit_bottom_tokens.iter().zip(&r.logit_bottom_values) {
                    cols[1].label(format!("{}  {:+.3}", show_token(tok), v));
                }
                cols[2].strong("Nearest decoder directions");
                for n in t.neighbours(f) {
                    if cols[2]
                        .link(format!(
                            "#{}  cos {:.3}  jaccard {:.3}",
                            n.neighbour, n.cosine, n.jaccard
                        ))
                        .clicked()
                    {
                        go = Some(n.neighbour);
                    }
                }
            });
            if !r.head_share.is_empty() {
                ui.strong("Decoder norm by head");
                let bars: Vec<Bar> = r
                    .head_share
                    .iter()
                    .enumerate()
                    .map(|(h, &s)| {
                        Bar::new(h as f64, s as f64)
                            .width(0.8)
                            .name(format!("head {h}"))
                    })
                    .collect();
                Plot::new("heads")
                    .height(100.0)
                    .allow_scroll(false)
                    .show(ui, |p| p.bar_chart(BarChart::new("head share", bars)));
            }
            ui.separator();
            self.steer_panel(ui, f, r.max_act);
            ui.separator();
            match &self.page.as_ref().expect("ensured").contexts {
                Err(e) => {
                    problems_ui(
                        ui,
                        &[Problem {
                            what: format!("contexts: {e}"),
                            fix: self.entry().map(|d| {
                                format!("saescope analyze --dict {}", d.dir.path().display())
                            }),
                        }],
                    );
                }
                Ok(ctxs) => {
                    ui.strong("Top activations");
                    for c in ctxs.iter().filter(|c| c.kind == ContextKind::Top) {
                        context_ui(ui, c, r.max_act);
                    }
                    let mut intervals: Vec<u8> = ctxs
                        .iter()
                        .filter_map(|c| match c.kind {
                            ContextKind::Interval(i) => Some(i),
                            ContextKind::Top => None,
                        })
                        .collect();
                    intervals.sort_unstable();
                    intervals.dedup();
                    let k = t.summary.intervals.max(1) as f32;
                    for i in intervals.into_iter().rev() {
                        ui.strong(format!(
                            "Interval {}: activations {:.3} to {:.3}",
                            i,
                            r.max_act * i as f32 / k,
                            r.max_act * (i as f32 + 1.0) / k
                        ));
                        for c in ctxs.iter().filter(|c| c.kind == ContextKind::Interval(i)) {
                            context_ui(ui, c, r.max_act);
                        }
                    }
                }
            }
        });
        if let Some(g) = go {
            self.open_feature(g);
        }
    }
}
