//! Attention-output features by head: which head carries each feature's decoder norm.

use crate::data::DictEntry;
use crate::state::Explorer;
use crate::widgets::{argmax, heat};
use eframe::egui::{self, RichText};

impl Explorer {
    pub(crate) fn heads_view(&mut self, ui: &mut egui::Ui) {
        let Some(run) = &self.run else {
            super::no_run(ui);
            return;
        };
        let z: Vec<(usize, usize, DictEntry)> = run
            .dictionaries
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.attention_layer().map(|l| (i, l, d.clone())))
            .collect();
        if z.is_empty() {
            ui.heading("No attention-output dictionary");
            ui.label("Train one on a blocks.L.attn.hook_z hook to see features by head.");
            return;
        }
        ui.heading("Features by attention head");
        ui.label("Each cell counts the features whose decoder norm lies mostly in that head. Select one to list the features it is most responsible for.");
        let mut pick = None;
        let mut load = None;
        egui::Grid::new("heads-grid").show(ui, |ui| {
            for (i, layer, d) in &z {
                ui.label(format!("layer {layer}"));
                match self.tables.get(&d.features_dir()) {
                    Some(Ok(t)) => {
                        let heads = t.features.first().map_or(0, |r| r.head_share.len());
                        let mut counts = vec![0usize; heads];
                        for r in &t.features {
                            if let Some(h) = argmax(&r.head_share) {
                                counts[h] += 1;
                            }
                        }
                        let max = counts.iter().copied().max().unwrap_or(1).max(1);
                        for (h, c) in counts.iter().enumerate() {
                            let sel = self.heads_selected == Some((*i, h));
                            let colour = heat(*c as f32 / max as f32);
                            let b = egui::Button::new(RichText::new(format!("L{layer}H{h}: {c}")))
                                .fill(colour)
                                .selected(sel);
                            if ui.add(b).clicked() {
                                pick = Some((*i, h));
                            }
                        }
                    }
                    Some(Err(e)) => {
                        ui.label(format!("feature store missing: {e}"));
                    }
                    None => {
                        if ui.button("load").clicked() {
                            load = Some(d.features_dir());
                        }
                    }
                }
                ui.end_row();
            }
        });
        if let Some(dir) = load {
            self.load_table(&dir);
        }
        if let Some(p) = pick {
            self.heads_selected = Some(p);
        }
        if let Some((i, h)) = self.heads_selected {
            let Some(d) = self
                .run
                .as_ref()
                .and_then(|r| r.dictionaries.get(i))
                .cloned()
            else {
                return;
            };
            if let Some(Ok(t)) = self.tables.get(&d.features_dir()).cloned() {
                let mut fs: Vec<(u32, f32)> = t
                    .features
                    .iter()
                    .map(|r| (r.feature, r.head_share.get(h).copied().unwrap_or(0.0)))
                    .filter(|p| p.1 > 0.0)
                    .collect();
                fs.sort_by(|a, b| b.1.total_cmp(&a.1));
                ui.separator();
                ui.strong(format!(
                    "Features of head {h} (layer {}), by share of decoder norm",
                    d.attention_layer().unwrap_or(0)
                ));
                let mut open = None;
                egui::ScrollArea::vertical().show(ui, |ui| {
                    for (f, s) in fs.iter().take(100) {
                        if ui.link(format!("#{f}  share {s:.3}")).clicked() {
                            open = Some(*f);
                        }
                    }
                });
                if let Some(f) = open {
                    if self.dict != Some(i) {
                        self.select_dict(i);
                    }
                    self.open_feature(f);
                }
            }
        }
    }
}
