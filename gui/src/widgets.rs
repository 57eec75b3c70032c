//! Widgets every view shares: loading and problem notices, density bars, shaded tokens and
//! context windows, colours and number formats.

use crate::data::{Loading, Problem};
use eframe::egui::{self, Color32, RichText, Sense};
use saescope_store::features::ContextRow;

/// The spinner, stage and Cancel button of a background load.
pub(crate) fn loading_ui<T: Send + 'static>(ui: &mut egui::Ui, l: &Loading<T>) {
    ui.horizontal(|ui| {
        ui.add(egui::Spinner::new());
        ui.label(format!("{}: {} ({:.1} s)", l.what, l.stage(), l.seconds()));
        if ui.button("Cancel").clicked() {
            l.cancel();
        }
    });
}

/// What could not be read, each with the command that makes it.
pub(crate) fn problems_ui(ui: &mut egui::Ui, problems: &[Problem]) {
    for p in problems {
        ui.colored_label(Color32::from_rgb(220, 140, 40), format!("⚠ {}", p.what));
        if let Some(fix) = &p.fix {
            ui.horizontal(|ui| {
                ui.label("To make it:");
                ui.code(fix);
            });
        }
    }
}

/// Clickable log10-density bars; returns the range of a clicked bar.
pub(crate) fn density_bars(
    ui: &mut egui::Ui,
    hist: &[u64],
    current: Option<(f64, f64)>,
) -> Option<(f64, f64)> {
    let max = hist.iter().copied().max().unwrap_or(0).max(1) as f32;
    let mut clicked = None;
    ui.horizontal(|ui| {
        ui.spacing_mut().item_spacing.x = 2.0;
        for (i, &c) in hist.iter().enumerate() {
            let lo = -10.0 + 0.5 * i as f64;
            let range = (lo, lo + 0.5);
            let (rect, resp) = ui.allocate_exact_size(egui::vec2(18.0, 48.0), Sense::click());
            let h = 46.0 * c as f32 / max;
            let bar = egui::Rect::from_min_max(
                egui::pos2(rect.left(), rect.bottom() - h.max(1.0)),
                rect.right_bottom(),
            );
            let colour = if current == Some(range) {
                ui.visuals().selection.bg_fill
            } else {
                ui.visuals()
                    .widgets
                    .inactive
                    .fg_stroke
                    .color
                    .gamma_multiply(0.6)
            };
            ui.painter().rect_filled(bar, 1.0, colour);
            let label = format!("density 1e{lo:.1} to 1e{:.1}: {c} features", lo + 0.5);
            resp.widget_info(|| egui::WidgetInfo::labeled(egui::WidgetType::Button, true, &label));
            let resp = resp.on_hover_text(&label);
            if resp.clicked() {
                clicked = Some(range);
            }
        }
    });
    clicked
}

/// One context window, each token shaded by the feature's activation on it.
pub(crate) fn context_ui(ui: &mut egui::Ui, c: &ContextRow, max: f32) {
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing.x = 0.0;
        ui.label(
            RichText::new(format!("{:.3}  ", c.activation))
                .monospace()
                .weak(),
        );
        for (j, (tok, &a)) in c.tokens.iter().zip(&c.acts).enumerate() {
            let r = token_chip(ui, tok, a, max);
            if j == c.focus as usize {
                ui.painter().rect_stroke(
                    r.rect,
                    1.0,
                    egui::Stroke::new(1.0, ui.visuals().strong_text_color()),
                    egui::StrokeKind::Inside,
                );
            }
        }
    });
}

/// A token with a background whose strength is `a / max`; its value on hover.
pub(crate) fn token_chip(ui: &mut egui::Ui, tok: &str, a: f32, max: f32) -> egui::Response {
    let strength = if max > 0.0 {
        (a / max).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let bg = Color32::from_rgba_unmultiplied(255, 120, 0, (strength * 200.0) as u8);
    ui.add(
        egui::Label::new(RichText::new(show_token(tok)).background_color(bg)).sense(Sense::hover()),
    )
    .on_hover_text(format!("{a:.4}"))
}

/// Makes whitespace visible in a token.
pub fn show_token(t: &str) -> String {
    t.replace('\n', "↵").replace('\t', "⇥")
}

/// Orange for positive, blue for negative, as strong as |x| (at most 1).
pub(crate) fn signed_colour(x: f32) -> Color32 {
    let a = (x.abs().clamp(0.0, 1.0) * 200.0) as u8;
    if x >= 0.0 {
        Color32::from_rgba_unmultiplied(255, 120, 0, a)
    } else {
        Color32::from_rgba_unmultiplied(40, 120, 255, a)
    }
}

/// Orange as strong as x (at most 1).
pub(crate) fn heat(x: f32) -> Color32 {
    Color32::from_rgba_unmultiplied(255, 120, 0, (x.clamp(0.0, 1.0) * 180.0) as u8)
}

/// The index of the largest value.
pub(crate) fn argmax(v: &[f32]) -> Option<usize> {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

/// A number with `digits` decimals, or a dash.
pub(crate) fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// A whole number with thousands separators.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
