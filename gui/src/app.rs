//! One frame of the explorer: the navigation bar, keyboard shortcuts, and the current view.

use crate::state::{Explorer, View};
use crate::widgets::loading_ui;
use eframe::egui;

impl Explorer {
    /// One frame.
    pub fn ui(&mut self, ctx: &egui::Context) {
        self.poll();
        self.keys(ctx);
        egui::TopBottomPanel::top("nav").show(ctx, |ui| self.nav(ui));
        egui::CentralPanel::default().show(ctx, |ui| {
            if let Some(l) = &self.run_loading {
                loading_ui(ui, l);
                return;
            }
            match self.view {
                View::Overview => self.overview(ui),
                View::Features => self.features_view(ui),
                View::Feature => self.feature_view(ui),
                View::Prompt => self.prompt_view(ui),
                View::Heads => self.heads_view(ui),
                View::Circuits => self.circuits_view(ui),
            }
        });
        let busy = self.run_loading.is_some()
            || self.table_loading.is_some()
            || self.worker.as_ref().is_some_and(|w| w.pending.is_some());
        if busy {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }

    fn keys(&mut self, ctx: &egui::Context) {
        if ctx.wants_keyboard_input() {
            return;
        }
        let (alt_left, alt_right, up, down, enter) = ctx.input(|i| {
            (
                i.modifiers.alt && i.key_pressed(egui::Key::ArrowLeft),
                i.modifiers.alt && i.key_pressed(egui::Key::ArrowRight),
                i.key_pressed(egui::Key::ArrowUp),
                i.key_pressed(egui::Key::ArrowDown),
                i.key_pressed(egui::Key::Enter),
            )
        });
        if alt_left {
            self.back();
        }
        if alt_right {
            self.forward();
        }
        if self.view == View::Features {
            if down && self.list.cursor + 1 < self.list.rows.len() {
                self.list.cursor += 1;
            }
            if up && self.list.cursor > 0 {
                self.list.cursor -= 1;
            }
            if enter && let Some(&f) = self.list.rows.get(self.list.cursor) {
                self.open_feature(f);
            }
        }
    }

    fn nav(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.strong("saescope");
            ui.separator();
            for (v, name) in View::ALL {
                if ui.selectable_label(self.view == v, name).clicked() {
                    self.view = v;
                }
            }
            ui.separator();
            if ui
                .add_enabled(self.at > 0, egui::Button::new("◀ Back"))
                .on_hover_text("Alt+Left")
                .clicked()
            {
                self.back();
            }
            if ui
                .add_enabled(
                    self.at + 1 < self.history.len(),
                    egui::Button::new("Forward ▶"),
                )
                .on_hover_text("Alt+Right")
                .clicked()
            {
                self.forward();
            }
            if let Some((_, l)) = &self.table_loading {
                ui.separator();
                ui.add(egui::Spinner::new());
                ui.label(format!("{}: {} ({:.1} s)", l.what, l.stage(), l.seconds()));
                if ui.button("Cancel").clicked() {
                    l.cancel();
                }
            }
        });
    }
}

impl eframe::App for Explorer {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.ui(ctx);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.memory);
    }
}
