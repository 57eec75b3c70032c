//! The explorer's link to the model: the prompt view and the steering panels send requests to
//! a worker thread that owns a [`PromptEngine`] (the model and the dictionary, loaded once per
//! dictionary) and poll for answers, so the window never waits on a forward pass or on
//! generation.

use crate::error::{ExploreError, panic_text};
use saescope_store::prompt::{Attribution, PromptView};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};

/// Runs the model and one dictionary on prompts. The `saescope` binary implements it with a
/// `saescope-analysis` session; the explorer never loads a model itself, and so does not link
/// libtorch.
pub trait PromptEngine: Send {
    /// Per token, the `top` most active features.
    fn view(&mut self, text: &str, top: usize) -> Result<PromptView, ExploreError>;
    /// Attention-output dictionaries: feature `feature` at token `dest` by head and source.
    fn attribution(
        &mut self,
        text: &str,
        feature: u32,
        dest: usize,
    ) -> Result<Attribution, ExploreError>;
    /// Greedy continuations of `text`, clean and with `feature` pushed by `push` at the
    /// dictionary's hook, `max_new_tokens` new tokens each (as `saescope steer`).
    fn steer(
        &mut self,
        text: &str,
        feature: u32,
        push: SteerPush,
        max_new_tokens: usize,
    ) -> Result<Steered, ExploreError>;
}

/// How a steering request pushes on its feature.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SteerPush {
    /// Add this many times the feature's decoder direction at its largest activation.
    Add(f32),
    /// Set the feature's activation to this value, keeping the reconstruction error.
    Clamp(f32),
}

impl std::fmt::Display for SteerPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SteerPush::Add(s) => write!(f, "add {s:.2}"),
            SteerPush::Clamp(v) => write!(f, "clamp to {v:.2}"),
        }
    }
}

/// A prompt's clean and steered continuations.
#[derive(Clone, Debug, PartialEq)]
pub struct Steered {
    /// The prompt.
    pub prompt: String,
    /// The feature pushed.
    pub feature: u32,
    /// How it was pushed.
    pub push: SteerPush,
    /// The continuation without the push.
    pub clean: String,
    /// The continuation with it.
    pub steered: String,
    /// KL(clean ‖ steered) of the next-token distributions, averaged over the steered
    /// continuation's steps, in nats.
    pub mean_kl: f64,
}

/// Opens an engine for the dictionary in a directory (on the worker thread: it may take seconds).
pub type EngineFactory = Box<dyn Fn(&Path) -> Result<Box<dyn PromptEngine>, ExploreError> + Send>;

/// What the views ask the engine.
#[derive(Clone, Debug)]
pub enum Request {
    /// The prompt view of `text`.
    View {
        /// The prompt.
        text: String,
        /// Features per token.
        top: usize,
    },
    /// An attribution by head and source.
    Attribution {
        /// The prompt.
        text: String,
        /// The feature.
        feature: u32,
        /// The destination token.
        dest: usize,
    },
    /// Clean and steered continuations.
    Steer {
        /// The prompt.
        text: String,
        /// The feature.
        feature: u32,
        /// How it is pushed.
        push: SteerPush,
        /// New tokens per continuation.
        max_new_tokens: usize,
    },
}

/// The engine's answers.
pub enum Answer {
    /// To [`Request::View`].
    View(PromptView),
    /// To [`Request::Attribution`].
    Attribution(Attribution),
    /// To [`Request::Steer`].
    Steer(Steered),
}

struct Job {
    id: u64,
    dict: PathBuf,
    request: Request,
}

/// The worker thread and the last answer it gave.
pub struct Worker {
    tx: Sender<Job>,
    rx: Receiver<(u64, Result<Answer, ExploreError>)>,
    next: u64,
    /// The request in flight, if any.
    pub pending: Option<u64>,
    /// What the request in flight asked, handed back with its answer.
    asked: Option<Request>,
}

impl Worker {
    /// Starts the worker thread; engines are opened with `factory`, and `ctx` is repainted when
    /// an answer arrives.
    pub fn start(factory: EngineFactory, ctx: Option<eframe::egui::Context>) -> Worker {
        let (tx, jobs) = std::sync::mpsc::channel::<Job>();
        let (answers, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("saescope-explore-prompt".into())
            .spawn(move || {
                let mut engine: Option<(PathBuf, Box<dyn PromptEngine>)> = None;
                while let Ok(mut job) = jobs.recv() {
                    // Only the newest prompt matters.
                    while let Ok(newer) = jobs.try_recv() {
                        job = newer;
                    }
                    let result = answer(&factory, &mut engine, &job);
                    if answers.send((job.id, result)).is_err() {
                        break;
                    }
                    if let Some(ctx) = &ctx {
                        ctx.request_repaint();
                    }
                }
            })
            .expect("spawning a thread");
        Worker {
            tx,
            rx,
            next: 0,
            pending: None,
            asked: None,
        }
    }

    /// Sends a request about the dictionary in `dict`; it supersedes any unanswered one.
    pub fn send(&mut self, dict: &Path, request: Request) {
        self.next += 1;
        let job = Job {
            id: self.next,
            dict: dict.to_owned(),
            request: request.clone(),
        };
        if self.tx.send(job).is_ok() {
            self.pending = Some(self.next);
            self.asked = Some(request);
        }
    }

    /// The latest request and its answer, once the answer is there.
    pub fn poll(&mut self) -> Option<(Request, Result<Answer, ExploreError>)> {
        loop {
            match self.rx.try_recv() {
                Ok((id, r)) if Some(id) == self.pending => {
                    self.pending = None;
                    return self.asked.take().map(|q| (q, r));
                }
                Ok(_) => continue, // an answer to a superseded request
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    self.pending.take()?;
                    let stopped = Err(ExploreError::Worker("the prompt worker stopped".into()));
                    return self.asked.take().map(|q| (q, stopped));
                }
            }
        }
    }
}

/// Answers one job, opening the engine for its dictionary first when needed. A panic in the
/// factory or the engine becomes an error naming what stopped, so the thread lives on for the
/// next request and the view is never left waiting.
fn answer(
    factory: &EngineFactory,
    engine: &mut Option<(PathBuf, Box<dyn PromptEngine>)>,
    job: &Job,
) -> Result<Answer, ExploreError> {
    let mut opening = false;
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if engine.as_ref().is_none_or(|(d, _)| *d != job.dict) {
            opening = true;
            *engine = None;
            let opened = factory(&job.dict).map_err(|e| {
                ExploreError::Engine(format!(
                    "cannot open the model with the dictionary in {}: {e}",
                    job.dict.display()
                ))
            })?;
            *engine = Some((job.dict.clone(), opened));
            opening = false;
        }
        let e = &mut engine.as_mut().expect("just opened").1;
        match &job.request {
            Request::View { text, top } => e.view(text, *top).map(Answer::View),
            Request::Attribution {
                text,
                feature,
                dest,
            } => e
                .attribution(text, *feature, *dest)
                .map(Answer::Attribution),
            Request::Steer {
                text,
                feature,
                push,
                max_new_tokens,
            } => e
                .steer(text, *feature, *push, *max_new_tokens)
                .map(Answer::Steer),
        }
    }));
    run.unwrap_or_else(|payload| {
        // An engine that panicked may be half-updated, so it is dropped and the next request
        // opens a fresh one. Dropping it may panic as well, which must not end the thread.
        let dead = engine.take();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(dead)));
        let during = if opening {
            format!("while opening the dictionary in {}", job.dict.display())
        } else {
            "on this prompt".to_owned()
        };
        let why = panic_text(&*payload).map_or(String::new(), |m| format!(": {m}"));
        Err(ExploreError::Engine(format!(
            "the prompt engine stopped {during}{why}. Run again to start a fresh one."
        )))
    })
}
