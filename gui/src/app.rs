//! The explorer's state and its views. The state is plain data (what is open, what is selected,
//! the history of feature pages); each view is a function that draws it and records what the
//! user asked for. Data comes only from [`crate::data`] and answers from [`crate::engine`].

use crate::data::{DictEntry, FeatureTable, Loading, Problem, RunData};
use crate::engine::{Answer, EngineFactory, Request, Worker};
use eframe::egui::{self, Color32, RichText, Sense};
use egui_extras::{Column, TableBuilder};
use egui_plot::{Bar, BarChart, Line, Plot, PlotPoints};
use saescope_sae::inspect::{Attribution, PromptView};
use saescope_store::features::{ContextKind, ContextRow};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reads one training curve off a log line.
type Series = fn(&crate::data::CurvePoint) -> f64;

/// What is remembered between launches.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub run: Option<PathBuf>,
    pub dictionary: Option<String>,
    pub feature: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Overview,
    Features,
    Feature,
    Prompt,
    Heads,
}

impl View {
    const ALL: [(View, &'static str); 5] = [
        (View::Overview, "Overview"),
        (View::Features, "Features"),
        (View::Feature, "Feature"),
        (View::Prompt, "Prompt"),
        (View::Heads, "Heads"),
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Feature,
    Density,
    MaxAct,
    TopLogit,
}

/// The feature list's filters and the order they produce.
pub struct ListState {
    pub search: String,
    /// log10 density bounds (inclusive low, exclusive high).
    pub density: Option<(f64, f64)>,
    pub sort: SortBy,
    pub descending: bool,
    /// Features passing the filters, in display order.
    pub rows: Vec<u32>,
    /// Selected row (keyboard navigation).
    pub cursor: usize,
    dirty: bool,
}

impl Default for ListState {
    fn default() -> Self {
        ListState {
            search: String::new(),
            density: None,
            sort: SortBy::Density,
            descending: true,
            rows: Vec::new(),
            cursor: 0,
            dirty: true,
        }
    }
}

impl ListState {
    fn refresh(&mut self, table: &FeatureTable) {
        let needle = self.search.trim().to_lowercase();
        let number: Option<u32> = needle.parse().ok();
        let mut rows: Vec<u32> = (0..table.len() as u32)
            .filter(|&f| {
                let r = &table.features[f as usize];
                let in_density = self.density.is_none_or(|(lo, hi)| {
                    let x = (r.density + 1e-10).log10();
                    x >= lo && x < hi
                });
                in_density && (needle.is_empty() || number == Some(f) || table.matches(f, &needle))
            })
            .collect();
        let key = |f: &u32| -> f64 {
            let r = &table.features[*f as usize];
            match self.sort {
                SortBy::Feature => *f as f64,
                SortBy::Density => r.density,
                SortBy::MaxAct => r.max_act as f64,
                SortBy::TopLogit => r.logit_top_values.first().copied().unwrap_or(0.0) as f64,
            }
        };
        rows.sort_by(|a, b| {
            let o = key(a).total_cmp(&key(b)).then(a.cmp(b));
            if self.descending { o.reverse() } else { o }
        });
        self.rows = rows;
        self.cursor = self.cursor.min(self.rows.len().saturating_sub(1));
        self.dirty = false;
    }
}

/// A feature page's data, read when the page opens.
pub struct Page {
    pub feature: u32,
    pub contexts: Result<Vec<ContextRow>, String>,
    pub seconds: f64,
}

#[derive(Default)]
pub struct PromptState {
    pub text: String,
    /// The text the shown result belongs to.
    pub ran: String,
    pub result: Option<Result<PromptView, String>>,
    /// Shade the prompt by this feature.
    pub shade: Option<u32>,
    pub dest: Option<usize>,
    pub attribution: Option<Result<Attribution, String>>,
}

/// The whole explorer.
pub struct Explorer {
    pub run: Option<RunData>,
    run_loading: Option<Loading<RunData>>,
    /// Index into run.dictionaries.
    pub dict: Option<usize>,
    tables: HashMap<PathBuf, Result<Arc<FeatureTable>, String>>,
    table_loading: Option<(PathBuf, Loading<FeatureTable>)>,
    pub view: View,
    pub list: ListState,
    pub history: Vec<u32>,
    pub at: usize,
    pub page: Option<Page>,
    pub prompt: PromptState,
    worker: Option<Worker>,
    pub heads_selected: Option<(usize, usize)>,
    pub memory: Memory,
    /// A prompt to run as soon as a dictionary is selected.
    prompt_queued: bool,
    /// Where to load from when there is no repaint context (tests): loads finish synchronously.
    ctx: Option<egui::Context>,
}

impl Explorer {
    /// An explorer on `run` (or nothing, with `None`), with an optional prompt engine.
    pub fn new(
        run: Option<PathBuf>,
        memory: Memory,
        engine: Option<EngineFactory>,
        ctx: Option<egui::Context>,
    ) -> Explorer {
        let mut e = Explorer {
            run: None,
            run_loading: None,
            dict: None,
            tables: HashMap::new(),
            table_loading: None,
            view: View::Overview,
            list: ListState::default(),
            history: Vec::new(),
            at: 0,
            page: None,
            prompt: PromptState::default(),
            worker: engine.map(|f| Worker::start(f, ctx.clone())),
            heads_selected: None,
            memory,
            prompt_queued: false,
            ctx,
        };
        if let Some(dir) = run.or_else(|| e.memory.run.clone()) {
            e.open_run(&dir);
        }
        e
    }

    /// Starts on `view`, with `prompt` sent to the engine once the run is open.
    pub fn start_at(&mut self, view: Option<View>, prompt: Option<String>) {
        if let Some(v) = view {
            self.view = v;
        }
        if let Some(p) = prompt {
            self.prompt.text = p;
            self.prompt_queued = true;
        }
    }

    pub fn open_run(&mut self, dir: &Path) {
        let d = dir.to_owned();
        self.run_loading = Some(Loading::start(
            format!("opening {}", dir.display()),
            self.ctx.clone(),
            move |stage, _| {
                stage("manifest and dictionaries");
                Ok(RunData::open(&d))
            },
        ));
    }

    /// Blocks until background loads are done (tests and benchmarks).
    pub fn settle(&mut self) {
        if let Some(l) = self.run_loading.take() {
            let r = l.wait();
            self.finish_run(r);
        }
        if let Some((dir, l)) = self.table_loading.take() {
            let r = l.wait();
            self.finish_table(dir, r);
        }
    }

    fn finish_run(&mut self, r: Result<RunData, String>) {
        let run = r.unwrap_or_else(|e| RunData {
            dir: PathBuf::new(),
            manifest: None,
            dictionaries: Vec::new(),
            problems: vec![Problem { what: e, fix: None }],
        });
        // What is remembered belongs to the run it was remembered in.
        if self.memory.run.as_ref().is_some_and(|r| *r != run.dir) {
            self.memory = Memory {
                run: Some(run.dir.clone()),
                ..Memory::default()
            };
        }
        self.memory.run = Some(run.dir.clone());
        let wanted = self.memory.dictionary.clone();
        let pick = run
            .dictionaries
            .iter()
            .position(|d| Some(&d.name) == wanted.as_ref())
            .or(if run.dictionaries.is_empty() {
                None
            } else {
                Some(0)
            });
        self.run = Some(run);
        if let Some(i) = pick {
            self.select_dict(i);
        }
    }

    pub fn select_dict(&mut self, i: usize) {
        let Some(entry) = self.run.as_ref().and_then(|r| r.dictionaries.get(i)) else {
            return;
        };
        if self.dict != Some(i) {
            self.history.clear();
            self.at = 0;
            self.page = None;
            self.prompt.result = None;
            self.prompt.attribution = None;
            self.list = ListState::default();
        }
        self.dict = Some(i);
        self.memory.dictionary = Some(entry.name.clone());
        let dir = entry.features_dir();
        self.load_table(&dir);
    }

    fn load_table(&mut self, dir: &Path) {
        if self.tables.contains_key(dir)
            || self.table_loading.as_ref().is_some_and(|(d, _)| d == dir)
        {
            return;
        }
        let d = dir.to_owned();
        self.table_loading = Some((
            dir.to_owned(),
            Loading::start(
                format!("reading the feature store {}", dir.display()),
                self.ctx.clone(),
                move |stage, cancel| FeatureTable::open(&d, stage, cancel),
            ),
        ));
    }

    pub fn entry(&self) -> Option<&DictEntry> {
        self.run.as_ref()?.dictionaries.get(self.dict?)
    }

    /// The current dictionary's feature store, if it is loaded.
    pub fn table(&self) -> Option<Arc<FeatureTable>> {
        let dir = self.entry()?.features_dir();
        self.tables.get(&dir)?.as_ref().ok().cloned()
    }

    fn table_error(&self) -> Option<String> {
        let dir = self.entry()?.features_dir();
        self.tables.get(&dir)?.as_ref().err().cloned()
    }

    fn finish_table(&mut self, dir: PathBuf, r: Result<FeatureTable, String>) {
        self.tables.insert(dir, r.map(Arc::new));
        self.list.dirty = true;
        self.restore_feature();
    }

    fn restore_feature(&mut self) {
        if self.history.is_empty()
            && let (Some(f), Some(t)) = (self.memory.feature, self.table())
            && (f as usize) < t.len()
        {
            self.history.push(f);
            self.at = 0;
        }
    }

    /// Opens feature `f`'s page, as a new step in the history.
    pub fn open_feature(&mut self, f: u32) {
        if self.history.get(self.at) != Some(&f) {
            self.history.truncate(self.at + 1);
            self.history.push(f);
            self.at = self.history.len() - 1;
        }
        self.view = View::Feature;
    }

    pub fn back(&mut self) {
        if self.at > 0 {
            self.at -= 1;
            self.view = View::Feature;
        }
    }

    pub fn forward(&mut self) {
        if self.at + 1 < self.history.len() {
            self.at += 1;
            self.view = View::Feature;
        }
    }

    pub fn current_feature(&self) -> Option<u32> {
        self.history.get(self.at).copied()
    }

    /// Reads the current feature's page data if it is not the one held.
    fn ensure_page(&mut self) {
        let (Some(f), Some(t)) = (self.current_feature(), self.table()) else {
            return;
        };
        if self.page.as_ref().is_some_and(|p| p.feature == f) {
            return;
        }
        let t0 = std::time::Instant::now();
        let contexts = t.contexts(f);
        self.page = Some(Page {
            feature: f,
            contexts,
            seconds: t0.elapsed().as_secs_f64(),
        });
        self.memory.feature = Some(f);
    }

    fn poll(&mut self) {
        if let Some(l) = &self.run_loading
            && let Some(r) = l.poll()
        {
            self.run_loading = None;
            self.finish_run(r);
        }
        if let Some((dir, l)) = &self.table_loading
            && let Some(r) = l.poll()
        {
            let dir = dir.clone();
            self.table_loading = None;
            self.finish_table(dir, r);
        }
        if self.prompt_queued
            && let Some(dir) = self.entry().map(|d| d.dir.clone())
            && let Some(w) = &mut self.worker
        {
            self.prompt_queued = false;
            self.prompt.ran = self.prompt.text.clone();
            w.send(
                &dir,
                Request::View {
                    text: self.prompt.ran.clone(),
                    top: 5,
                },
            );
        }
        if let Some(w) = &mut self.worker
            && let Some(answer) = w.poll()
        {
            match answer {
                Ok(Answer::View(v)) => self.prompt.result = Some(Ok(v)),
                Ok(Answer::Attribution(a)) => self.prompt.attribution = Some(Ok(a)),
                Err(e) => {
                    if self.prompt.dest.is_some() && self.prompt.result.is_some() {
                        self.prompt.attribution = Some(Err(e));
                    } else {
                        self.prompt.result = Some(Err(e));
                    }
                }
            }
        }
    }

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

    fn overview(&mut self, ui: &mut egui::Ui) {
        let Some(run) = &self.run else {
            ui.heading("No run open");
            ui.label("Start the explorer with a run directory: saescope explore RUN");
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
                        let pts: PlotPoints = d.curve.iter().map(|p| [p.tokens, get(p)]).collect();
                        Plot::new(format!("curve-{name}"))
                            .height(140.0)
                            .allow_scroll(false)
                            .show(col, |p| p.line(Line::new(name, pts)));
                    }
                });
            }
        }
    }

    /// The store's state when it is not ready to browse; true when it is.
    fn store_ready(&mut self, ui: &mut egui::Ui) -> bool {
        let Some(entry) = self.entry().cloned() else {
            ui.heading("No dictionary");
            ui.label("This run has no dictionary yet. Train one with saescope train.");
            return false;
        };
        if let Some((_, l)) = &self.table_loading {
            loading_ui(ui, l);
            return false;
        }
        if let Some(e) = self.table_error() {
            ui.heading("The feature store cannot be read");
            problems_ui(
                ui,
                &[Problem {
                    what: e,
                    fix: Some(format!("saescope analyze --dict {}", entry.dir.display())),
                }],
            );
            if ui.button("Retry").clicked() {
                self.tables.remove(&entry.features_dir());
                self.load_table(&entry.features_dir());
            }
            return false;
        }
        if self.table().is_none() {
            self.load_table(&entry.features_dir());
            return false;
        }
        true
    }

    fn features_view(&mut self, ui: &mut egui::Ui) {
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
                    .hint_text("top logit token or feature number")
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
            .column(Column::remainder())
            .scroll_to_row(cursor, None)
            .header(20.0, |mut h| {
                for name in [
                    "feature",
                    "density",
                    "max act",
                    "mean act",
                    "top logit tokens",
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

    fn feature_view(&mut self, ui: &mut egui::Ui) {
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
            match &self.page.as_ref().expect("ensured").contexts {
                Err(e) => {
                    problems_ui(
                        ui,
                        &[Problem {
                            what: format!("contexts: {e}"),
                            fix: self
                                .entry()
                                .map(|d| format!("saescope analyze --dict {}", d.dir.display())),
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

    fn prompt_view(&mut self, ui: &mut egui::Ui) {
        let Some(entry) = self.entry().cloned() else {
            ui.heading("No dictionary");
            return;
        };
        if self.worker.is_none() {
            ui.heading("Prompts need the model");
            ui.label("This explorer was started without a model. Start it with saescope explore RUN to run prompts.");
            return;
        }
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
                    w.send(&entry.dir, req);
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
                    &entry.dir,
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

    fn attribution_ui(&mut self, ui: &mut egui::Ui) {
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

    fn heads_view(&mut self, ui: &mut egui::Ui) {
        let Some(run) = &self.run else {
            ui.heading("No run open");
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

impl eframe::App for Explorer {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.ui(ctx);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.memory);
    }
}

fn loading_ui<T: Send + 'static>(ui: &mut egui::Ui, l: &Loading<T>) {
    ui.horizontal(|ui| {
        ui.add(egui::Spinner::new());
        ui.label(format!("{}: {} ({:.1} s)", l.what, l.stage(), l.seconds()));
        if ui.button("Cancel").clicked() {
            l.cancel();
        }
    });
}

fn problems_ui(ui: &mut egui::Ui, problems: &[Problem]) {
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
fn density_bars(
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
fn context_ui(ui: &mut egui::Ui, c: &ContextRow, max: f32) {
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
fn token_chip(ui: &mut egui::Ui, tok: &str, a: f32, max: f32) -> egui::Response {
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

fn signed_colour(x: f32) -> Color32 {
    let a = (x.abs().clamp(0.0, 1.0) * 200.0) as u8;
    if x >= 0.0 {
        Color32::from_rgba_unmultiplied(255, 120, 0, a)
    } else {
        Color32::from_rgba_unmultiplied(40, 120, 255, a)
    }
}

fn heat(x: f32) -> Color32 {
    Color32::from_rgba_unmultiplied(255, 120, 0, (x.clamp(0.0, 1.0) * 180.0) as u8)
}

fn argmax(v: &[f32]) -> Option<usize> {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

fn thousands(n: u64) -> String {
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
