//! Progress bars for long work, hidden with `--quiet` or when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A bar counting `unit` (e.g. "tokens") up to `total`, with rate and ETA.
pub fn bar(total: u64, message: &str, unit: &str) -> ProgressBar {
    if QUIET.load(Ordering::Relaxed) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let template = format!(
        "{{msg:>12}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, ETA {{eta}})"
    );
    pb.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(message.to_owned());
    pb
}

/// A bar for library work that reports (done, planned): made at the first report, when the
/// total is known.
pub struct Tracker {
    bar: Option<ProgressBar>,
    message: &'static str,
    unit: &'static str,
}

impl Tracker {
    pub fn new(message: &'static str, unit: &'static str) -> Tracker {
        Tracker {
            bar: None,
            message,
            unit,
        }
    }

    /// Moves the bar to `done` of `total`.
    pub fn update(&mut self, done: u64, total: u64) {
        let (message, unit) = (self.message, self.unit);
        self.bar
            .get_or_insert_with(|| bar(total, message, unit))
            .set_position(done);
    }

    /// Shows `note` after the bar's message (e.g. failures so far).
    pub fn note(&mut self, note: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{} ({note})", self.message));
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// A [`Tracker`] for work that asks a model, shareable across the threads that report to it:
/// each report (done, planned, failed) shows the failures, named by `failed`, and requests/s.
pub struct RequestTracker {
    tracker: std::sync::Mutex<Tracker>,
    started: std::time::Instant,
    failed: &'static str,
}

impl RequestTracker {
    pub fn new(message: &'static str, unit: &'static str, failed: &'static str) -> RequestTracker {
        RequestTracker {
            tracker: std::sync::Mutex::new(Tracker::new(message, unit)),
            started: std::time::Instant::now(),
            failed,
        }
    }

    /// Moves the bar to `done` of `total` and notes `failures` so far and the rate.
    pub fn update(&self, done: usize, total: usize, failures: usize) {
        let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        t.update(done as u64, total as u64);
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        t.note(&format!("{failures} {}, {rate:.2} requests/s", self.failed));
    }

    pub fn finish(self) {
        self.tracker
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .finish();
    }
}

/// A spinner for work of unknown length (a download), with elapsed time.
pub fn spinner(message: &str) -> ProgressBar {
    if QUIET.load(Ordering::Relaxed) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
    );
    pb.set_message(message.to_owned());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// A counter for work of unknown total, with rate.
pub fn counter(message: &str, unit: &str) -> ProgressBar {
    if QUIET.load(Ordering::Relaxed) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::no_length();
    let template = format!("{{spinner}} {{msg}} {{human_pos}} {unit} ({{per_sec}}, {{elapsed}})");
    pb.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    pb.set_message(message.to_owned());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}
