//! Circuits: the heads a task needs. A layers × heads map of code scores beside one of the
//! ablation effects, the pairs of heads with their path-patched effects, and the task's
//! prompts with the model's answers. A
//! click on a head shows its figures and, when an attention-output dictionary of its layer
//! exists, opens that head's features in the heads view.

use crate::data::CircuitData;
use crate::state::{Explorer, View};
use crate::widgets::{heat, signed_colour};
use eframe::egui::{self, RichText};
use saescope_store::circuits::Spread;

/// A heat map over layers × heads: `cell` gives a cell's text and colour; a click selects the
/// head.
fn head_map(
    ui: &mut egui::Ui,
    id: &str,
    c: &CircuitData,
    selected: Option<(u32, u32)>,
    cell: &dyn Fn(u32, u32) -> (String, egui::Color32),
) -> Option<(u32, u32)> {
    let mut pick = None;
    let heads = c.summary.heads_per_layer as u32;
    egui::Grid::new(id).spacing([2.0, 2.0]).show(ui, |ui| {
        ui.label("");
        for h in 0..heads {
            ui.small(format!("H{h}"));
        }
        ui.end_row();
        for l in c.layers() {
            ui.small(format!("L{l}"));
            for h in 0..heads {
                let (text, colour) = cell(l, h);
                let button = egui::Button::new(RichText::new(text).small())
                    .fill(colour)
                    .selected(selected == Some((l, h)));
                if ui.add(button).on_hover_text(format!("L{l}H{h}")).clicked() {
                    pick = Some((l, h));
                }
            }
            ui.end_row();
        }
    });
    pick
}

impl Explorer {
    pub(crate) fn circuits_view(&mut self, ui: &mut egui::Ui) {
        let Some(run) = &self.run else {
            super::no_run(ui);
            return;
        };
        if run.circuits.is_empty() {
            ui.heading("No circuit results");
            ui.label("Find the heads a task needs, checked against ablation, with:");
            ui.code(format!(
                "saescope circuits --run {} --task ioi",
                run.dir.display()
            ));
            return;
        }
        let (mut task, mut selected) = self.circuit;
        task = task.min(run.circuits.len() - 1);
        let c = run.circuits[task].clone();
        ui.horizontal(|ui| {
            ui.heading("Circuit");
            for (i, other) in run.circuits.iter().enumerate() {
                if ui
                    .selectable_label(i == task, &other.summary.task)
                    .clicked()
                {
                    task = i;
                    selected = None;
                }
            }
        });
        let s = &c.summary;
        ui.label(format!(
            "{} prompts: accuracy {:.2}, logit difference {:.2} (corrupted {:.2}); ground truth: {}",
            s.prompts, s.accuracy, s.logit_diff, s.corrupted_logit_diff, s.ground_truth
        ));
        for a in &s.agreement {
            let auc = Spread::or_dash(&a.node_auc);
            ui.label(format!(
                "{} ({} heads): node ROC AUC {auc}",
                a.circuit, a.heads
            ));
        }
        if let Some(p) = &s.path_patching {
            for a in &p.agreement {
                let auc = Spread::or_dash(&a.edge_auc);
                ui.label(format!(
                    "path patching of {} heads (chosen by {}): {} of {} pairs above {:.3}, edge ROC AUC {auc}",
                    p.candidates.len(),
                    p.chosen_by,
                    a.edges,
                    p.pairs,
                    a.cutoff
                ));
            }
        }
        let t = &s.runtimes;
        ui.label(match t.ablation_sweep {
            Some(sweep) => format!(
                "code ranking {:.1} s, ablation sweep {sweep:.1} s",
                t.code_ranking
            ),
            None => format!("code ranking {:.1} s", t.code_ranking),
        });
        ui.separator();
        let max_score = c
            .heads
            .iter()
            .map(|h| h.code_score)
            .fold(0.0, f64::max)
            .max(1e-9);
        let max_effect = c
            .heads
            .iter()
            .filter_map(|h| h.ablation_effect.map(f64::abs))
            .fold(0.0, f64::max)
            .max(1e-9);
        let mut pick = None;
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                ui.strong("Code score");
                pick = pick.or(head_map(ui, "circuit-codes", &c, selected, &|l, h| {
                    let score = c.head(l, h).map_or(0.0, |r| r.code_score / max_score);
                    (format!("L{l}H{h}"), heat(score as f32))
                }));
            });
            if c.heads.iter().any(|h| h.ablation_effect.is_some()) {
                ui.vertical(|ui| {
                    ui.strong("Ablation effect");
                    pick = pick.or(head_map(ui, "circuit-effects", &c, selected, &|l, h| {
                        let e = c.head(l, h).and_then(|r| r.ablation_effect).unwrap_or(0.0);
                        (format!("{e:+.2}"), signed_colour((e / max_effect) as f32))
                    }));
                });
            }
            ui.vertical(|ui| {
                self.circuit_details(ui, &c, selected);
            });
        });
        if pick.is_some() {
            selected = pick;
        }
        self.circuit = (task, selected);
    }

    /// The selected head, the pairs and the prompts, beside the maps.
    fn circuit_details(
        &mut self,
        ui: &mut egui::Ui,
        c: &CircuitData,
        selected: Option<(u32, u32)>,
    ) {
        if let Some((l, h)) = selected
            && let Some(row) = c.head(l, h)
        {
            ui.strong(format!("Head L{l}H{h}"));
            ui.label(format!(
                "code score {:.2} ± {:.2} (rank {}), normalised {:.2}, from pairs {:.1}",
                row.code_score, row.code_score_std, row.rank, row.normalised, row.edge_score
            ));
            if let Some(e) = row.ablation_effect {
                ui.label(format!("ablation effect {e:+.3}"));
            }
            if let Some(e) = row.direct_effect {
                ui.label(format!(
                    "path-patched effect, own path to the logits {e:+.3}"
                ));
            }
            let dict = self.run.as_ref().and_then(|r| {
                r.dictionaries
                    .iter()
                    .position(|d| d.attention_layer() == Some(l as usize))
            });
            match dict {
                Some(i) => {
                    if ui
                        .button(format!("Features of head {h} (layer {l})"))
                        .clicked()
                    {
                        self.heads_selected = Some((i, h as usize));
                        let dir = self.run.as_ref().expect("open").dictionaries[i].features_dir();
                        if !self.tables.contains_key(&dir) {
                            self.load_table(&dir);
                        }
                        self.view = View::Heads;
                    }
                }
                None => {
                    ui.small(format!(
                        "no attention-output dictionary of layer {l}: train one on blocks.{l}.attn.hook_z to see this head's features"
                    ));
                }
            }
            ui.separator();
        }
        ui.strong("Pairs of heads (codes seen together on prompts only)");
        // The path-patched pairs first, however they score, then the best of the rest.
        let patched = c.edges.iter().filter(|e| e.path_effect.is_some());
        let others = c.edges.iter().filter(|e| e.path_effect.is_none()).take(50);
        egui::ScrollArea::vertical()
            .id_salt("circuit-edges")
            .max_height(160.0)
            .show(ui, |ui| {
                for e in patched.chain(others) {
                    let path = e
                        .path_effect
                        .map_or(String::new(), |p| format!(", path-patched {p:+.3}"));
                    ui.label(format!(
                        "L{}H{} -> L{}H{}  {:.1}{path}",
                        e.from_layer, e.from_head, e.to_layer, e.to_head, e.score
                    ));
                }
            });
        ui.separator();
        ui.strong("Prompts");
        egui::ScrollArea::vertical()
            .id_salt("circuit-prompts")
            .max_height(220.0)
            .show(ui, |ui| {
                for p in &c.prompts {
                    let right = p.logit_diff > 0.0;
                    ui.label(format!(
                        "{} | model: {:?}, answer {:?}, logit difference {:+.2}{}",
                        p.text,
                        p.predicted,
                        p.answer,
                        p.logit_diff,
                        if right { "" } else { " (wrong)" }
                    ));
                }
            });
    }
}
