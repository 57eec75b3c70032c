//! Explorer benchmark: a synthetic run whose dictionary has 65,536 features with 20 top
//! contexts each (plus 2 interval samples). Prints the time to open the run and show the
//! feature list, to open a feature page, and the frame time while scrolling the list, with
//! frames stepped through the egui_kittest harness (layout and input, no GPU rendering).
//!   cargo run --release -p saescope-gui --example bench_explore [-- FEATURES]

use eframe::egui;
use egui_kittest::Harness;
use saescope_gui::fixture::{self, FixtureSpec, RESID_DICT};
use saescope_gui::{Explorer, Memory, View};
use std::time::Instant;

fn summary(name: &str, mut ms: Vec<f64>, target: f64) {
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name:<28} median {:>7.2} ms   p95 {:>7.2} ms   max {:>7.2} ms   (target < {target} ms, {} samples)",
        pct(0.5),
        pct(0.95),
        pct(1.0),
        ms.len()
    );
}

fn main() {
    let features: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(65_536);
    let dir = tempfile::tempdir().expect("temp dir");
    let t = Instant::now();
    let spec = FixtureSpec {
        features,
        contexts: 20,
        heads: 9,
    };
    let run = fixture::make_run(dir.path(), &spec);
    println!(
        "explorer benchmark: {features} features x {} contexts (fixture written in {:.1} s)",
        spec.contexts + 2,
        t.elapsed().as_secs_f64()
    );

    // Open: read the run and the feature store, then draw the feature list once.
    let memory = Memory {
        dictionary: Some(RESID_DICT.into()),
        ..Memory::default()
    };
    let t = Instant::now();
    let mut app = Explorer::new(Some(run.clone()), memory, None, None);
    app.settle();
    app.view = View::Features;
    let mut h = Harness::builder()
        .with_size([1400.0, 1000.0])
        .build_state(|ctx, app: &mut Explorer| app.ui(ctx), app);
    h.step();
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(
        h.state().list.rows.len(),
        features,
        "the list shows every feature"
    );
    println!(
        "{:<28} {open_ms:>7.1} ms   (target < 1000 ms)",
        "open run + feature list"
    );

    // Feature pages: open 50 features spread over the table, one frame each.
    let mut page = Vec::new();
    for i in 0..50u32 {
        let f = (i as u64 * 1_327 % features as u64) as u32;
        h.state_mut().open_feature(f);
        let t = Instant::now();
        h.step();
        page.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(h.state().page.as_ref().map(|p| p.feature), Some(f));
    }
    summary("open a feature page", page, 50.0);

    // Scrolling: back to the list, the pointer over it, 300 frames of mouse-wheel scrolling.
    h.state_mut().view = View::Features;
    h.step();
    h.hover_at(egui::pos2(700.0, 600.0));
    let mut frames = Vec::new();
    for _ in 0..300 {
        h.event(egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Line,
            delta: egui::vec2(0.0, -12.0),
            modifiers: egui::Modifiers::NONE,
        });
        let t = Instant::now();
        h.step();
        frames.push(t.elapsed().as_secs_f64() * 1e3);
    }
    summary("scrolling frame", frames, 16.0);
}
