//! `saescope score`: scores latents' explanations against their test windows (detection,
//! fuzzing, simulation with the bundled model or any OpenAI-compatible server; embedding with
//! the bundled MiniLM; surprisal and intervention read by a model running here), beside two
//! controls, into `DICT/scores.parquet` and `DICT/score_windows.parquet`, and prints the run's
//! summary.

use super::explain::{DictArgs, ModelArgs, Select, example_sets, open_local, token_texts};
use crate::progress::RequestTracker;
use anyhow::{Result, bail};
use saescope_activations::assets;
use saescope_activations::bert::SentenceEncoder;
use saescope_analysis::Session;
use saescope_autointerp::explain::Explainer;
use saescope_autointerp::explain::train_windows;
use saescope_autointerp::local::LocalExplainer;
use saescope_autointerp::metrics::Interval;
use saescope_autointerp::read::Reader;
use saescope_autointerp::score::embedding::Embedder;
use saescope_autointerp::score::intervention::Steerer;
use saescope_autointerp::score::summary::{SummaryLine, summarize};
use saescope_autointerp::score::{
    Models, ScoreConfig, ScoreReport, Scorer, Tables, controls, jobs, score, test_windows,
};
use saescope_store::examples::ExampleRow;
use saescope_store::explanations::{Evidence, read_explanations};
use saescope_store::scores::read_scores;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub target: DictArgs,
    #[command(flatten)]
    pub select: Select,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// Score the explanations made from effects (`explain --output-side`) instead of those made
    /// from activating windows.
    #[arg(long)]
    pub output_side: bool,
    /// Keep scores already there that have valid answers and ask only for the rest.
    #[arg(long)]
    pub resume: bool,
}

/// How scoring runs (shared with `saescope autointerp`).
#[derive(clap::Args, Debug)]
pub struct ScoringArgs {
    /// Scorers, comma-separated: detection, fuzz, fuzz_active (a chat model answers yes or
    /// no), embedding (the bundled MiniLM ranks the windows by their cosine with the
    /// explanation), simulation (a model predicts each token's activation; read off the prompt
    /// by a local model, asked of a server), surprisal (a local model reads the windows after
    /// the explanation) and intervention (the latent is pushed, and a local model reads the
    /// explanation after the pushed text). With a server, surprisal and intervention read with
    /// the bundled model.
    #[arg(long, default_value = "detection,fuzz,embedding")]
    pub scorers: String,
    /// Leave out the controls (another latent's explanation; a list of the latent's most
    /// frequent tokens), which cost two more scores a latent.
    #[arg(long)]
    pub no_controls: bool,
    /// Activating test windows scored per latent at most.
    #[arg(long, default_value_t = ScoreConfig::default().positives)]
    pub positives: usize,
    /// Silent test windows scored per latent at most (hard negatives first).
    #[arg(long, default_value_t = ScoreConfig::default().negatives)]
    pub negatives: usize,
    /// Windows shown in one prompt (default: 5 to a server, 1 to the local model, which cannot
    /// keep count of a longer list).
    #[arg(long)]
    pub per_prompt: Option<usize>,
}

impl ScoringArgs {
    /// The settings for `model`, seeded with `seed`.
    pub fn config(&self, model: &ModelArgs, seed: u64) -> ScoreConfig {
        let base = if model.is_local() {
            local_config()
        } else {
            ScoreConfig {
                prefill: model.prefill,
                ..ScoreConfig::default()
            }
        };
        let per_prompt = self.per_prompt.unwrap_or(base.per_prompt).max(1);
        ScoreConfig {
            per_prompt,
            // An answer `[1,0,…]` takes about two tokens a window.
            max_tokens: base.max_tokens.max(2 * per_prompt + 4),
            positives: self.positives,
            negatives: self.negatives,
            seed,
            ..base
        }
    }
}

/// Parses `--scorers`.
pub fn parse_scorers(spec: &str) -> Result<Vec<Scorer>> {
    let mut out = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let all: Vec<&str> = Scorer::ALL.iter().map(|s| s.name()).collect();
        match Scorer::parse(name) {
            Some(s) if !out.contains(&s) => out.push(s),
            Some(_) => {}
            None => bail!(
                "--scorers: unknown scorer `{name}`; expected {}",
                all.join(", ")
            ),
        }
    }
    if out.is_empty() {
        bail!("--scorers {spec:?}: no scorer named");
    }
    Ok(out)
}

pub fn run(a: Args) -> Result<()> {
    let scorers = parse_scorers(&a.scoring.scorers)?;
    let session = a.target.open()?;
    let dir = &session.opened.dir;
    let examples = example_sets(&session)?;
    let evidence = if a.output_side {
        Evidence::Effects
    } else {
        Evidence::Activations
    };
    let table = dir.explanations_table();
    let explained = explained(&table, evidence)?;
    if explained.is_empty() {
        bail!(
            "{}: no explanations from {} to score; make them with `saescope explain --dict {}{}`",
            table.display(),
            evidence.name(),
            a.target.dict.display(),
            if a.output_side { " --output-side" } else { "" }
        );
    }
    let mut have: Vec<u32> = explained.keys().copied().collect();
    have.sort_unstable();
    let latents = a.select.choose(have, |n| {
        format!("{} explains {n} latents", table.display())
    })?;
    let cfg = a.scoring.config(&a.model, a.select.seed);
    a.model.warn_if_local("scoring", "scores");
    let model = a.model.open(dir.scores().join("cache"), session.device)?;
    let local = model.local();
    let plan = Plan {
        latents: &latents,
        scorers: &scorers,
        evidence,
        controls: !a.scoring.no_controls,
        resume: a.resume,
    };
    score_and_print(&session, &examples, &explained, &plan, &model, local, &cfg)
}

/// The explanations from `evidence` in the table at `table`, by latent.
pub fn explained(table: &Path, evidence: Evidence) -> Result<HashMap<u32, String>> {
    Ok(read_explanations(table)?
        .into_iter()
        .filter(|r| r.evidence == evidence)
        .filter_map(|r| Some((r.latent, r.explanation?)))
        .collect())
}

/// What to score.
pub struct Plan<'a> {
    /// The latents.
    pub latents: &'a [u32],
    /// The scorers.
    pub scorers: &'a [Scorer],
    /// Which of their explanations.
    pub evidence: Evidence,
    /// Score the controls too.
    pub controls: bool,
    /// Keep scores already there.
    pub resume: bool,
}

/// The bundled sentence encoder when `scorers` include the embedding scorer.
fn open_embedder(scorers: &[Scorer], device: tch::Device) -> Result<Option<SentenceEncoder>> {
    if !scorers.contains(&Scorer::Embedding) {
        return Ok(None);
    }
    let asset = assets::installed(assets::EMBEDDING_MODEL, "embedding model")?;
    let dir = asset.dir(&assets::cache_dir());
    Ok(Some(SentenceEncoder::open(&dir, device)?))
}

/// A model here to read with when `scorers` need one and `local` (the chat model, when it
/// runs here) is none: the bundled SmolLM2-135M-Instruct.
fn open_reader(
    scorers: &[Scorer],
    local: Option<&LocalExplainer>,
    device: tch::Device,
) -> Result<Option<LocalExplainer>> {
    let reads = |s: &Scorer| matches!(s, Scorer::Surprisal | Scorer::Intervention);
    if local.is_some() || !scorers.iter().any(reads) {
        return Ok(None);
    }
    Ok(Some(open_local(None, device)?))
}

/// Scores the `explained` latents of the plan with a progress bar, asking `chat` (`local` is
/// the same model when it runs here; the embedding scorer uses the bundled MiniLM, the
/// intervention scorer pushes in the session's model), then prints what happened and the
/// run's summary with its controls (the demo's too).
pub fn score_and_print(
    session: &Session,
    examples: &[ExampleRow],
    explained: &HashMap<u32, String>,
    plan: &Plan<'_>,
    chat: &dyn Explainer,
    local: Option<&LocalExplainer>,
    cfg: &ScoreConfig,
) -> Result<()> {
    let encoder = open_embedder(plan.scorers, session.device)?;
    let own_reader = open_reader(plan.scorers, local, session.device)?;
    let reader = local.or(own_reader.as_ref()).map(|l| l as &dyn Reader);
    let models = Models {
        chat,
        chat_reader: local.map(|l| l as &dyn Reader),
        embedder: encoder.as_ref().map(|e| e as &dyn Embedder),
        reader,
        steerer: plan
            .scorers
            .contains(&Scorer::Intervention)
            .then_some(session as &dyn Steerer),
    };
    let dir = &session.opened.dir;
    let token_text = token_texts(session);
    let train = train_windows(examples);
    let baseline = |f: u32| {
        let (active, _) = train.get(&f)?;
        controls::baseline(active, &token_text, cfg.mark_share, 3)
    };
    let job_list = jobs(
        explained,
        plan.latents,
        plan.evidence,
        plan.controls,
        &baseline,
        cfg.seed,
    );
    let tests = test_windows(examples, cfg.positives, cfg.negatives);
    let bar = RequestTracker::new("scoring", "steps", "windows failed");
    let report = score(
        &tests,
        &token_text,
        &job_list,
        plan.scorers,
        &models,
        cfg,
        plan.resume,
        &Tables {
            scores: &dir.scores_table(),
            windows: &dir.score_windows_table(),
        },
        &|done, total, failed| bar.update(done, total, failed),
    )?;
    bar.finish();
    print_report(&report, &dir.scores_table());
    let frequency: Option<HashMap<u32, f64>> = session
        .feature_rows()?
        .map(|rows| rows.iter().map(|r| (r.feature, r.density)).collect());
    let asked: BTreeSet<u32> = plan.latents.iter().copied().collect();
    let rows: Vec<_> = read_scores(&dir.scores_table())?
        .into_iter()
        .filter(|r| asked.contains(&r.latent))
        .collect();
    print_summary(&summarize(
        &rows,
        plan.evidence,
        frequency.as_ref(),
        cfg.seed,
    ));
    // A dictionary on object storage gets its scores beside it there.
    session.opened.publish()?;
    Ok(())
}

/// The settings a model on this machine scores with: one window a prompt, whose answer `[1]`
/// is begun for it, and 50 alternatives at each answer token.
pub fn local_config() -> ScoreConfig {
    ScoreConfig {
        per_prompt: 1,
        max_tokens: 4,
        prefill: true,
        // A small model is often so sure of its digit that the other is not among a few
        // alternatives, which would make every probability 1; locally, more cost nothing.
        top_logprobs: 50,
        ..ScoreConfig::default()
    }
}

fn print_report(r: &ScoreReport, table: &Path) {
    println!(
        "scored {} explanations on {} windows, {} windows without a valid answer ({:.1}%){}; written to {}",
        r.scored,
        r.windows,
        r.failed,
        100.0 * r.failed as f64 / r.windows.max(1) as f64,
        if r.kept > 0 {
            format!(", {} kept from before", r.kept)
        } else {
            String::new()
        },
        table.display()
    );
    if !r.without_windows.is_empty() {
        println!(
            "  {} latents have no activating test windows (too few to draw, or not drawn): {:?}",
            r.without_windows.len(),
            &r.without_windows[..r.without_windows.len().min(10)]
        );
    }
    for (scorer, mode) in &r.modes {
        println!("  {scorer}: predictions read from {mode}");
    }
    let mut reasons: Vec<&str> = r.errors.iter().map(|(_, _, e)| e.as_str()).collect();
    reasons.sort_unstable();
    reasons.dedup();
    for reason in reasons.iter().take(3) {
        let n = r.errors.iter().filter(|e| e.2 == *reason).count();
        println!("  failed ({n} scores): {reason}");
    }
    if reasons.len() > 3 {
        println!("  and {} other reasons", reasons.len() - 3);
    }
    if r.scored > 0 && r.with_probabilities == 0 {
        println!(
            "  the model gave no log-probabilities: no AUC; balanced accuracy, precision, recall and F1 only"
        );
    }
}

fn interval(i: &Option<Interval>) -> String {
    match i {
        Some(i) => format!("{:.3} [{:.3}, {:.3}]", i.mean, i.low, i.high),
        None => "-".into(),
    }
}

/// The summary table: per scorer, the real explanations and their controls side by side.
fn print_summary(lines: &[SummaryLine]) {
    if lines.is_empty() {
        return;
    }
    println!(
        "means over latents with 95% bootstrap intervals (balanced accuracy over valid answers; `all`: failures count as wrong; `weighted`: by firing frequency):"
    );
    println!(
        "  {:<12} {:<9} {:>7} {:>8}  {:<24} {:<24} {:<24} {:<24} {:<24}",
        "scorer",
        "control",
        "latents",
        "failed",
        "balanced accuracy",
        "all",
        "weighted",
        "AUC",
        "measure"
    );
    for l in lines {
        println!(
            "  {:<12} {:<9} {:>7} {:>7.1}%  {:<24} {:<24} {:<24} {:<24} {:<24}",
            l.scorer,
            l.control.name(),
            l.latents,
            100.0 * l.failed as f64 / l.windows.max(1) as f64,
            interval(&l.balanced_accuracy),
            interval(&l.balanced_accuracy_all),
            interval(&l.balanced_accuracy_weighted),
            interval(&l.auc),
            interval(&l.value),
        );
    }
    if lines.iter().any(|l| l.value.is_some()) {
        println!(
            "  measure: simulation, correlation of predicted and true activations; surprisal, loss drop on activating less silent windows (nats/token); intervention, rise in the explanation's log-probability after pushed text (nats/token)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scorers_parse_by_name_and_missing_ones_are_named() {
        assert_eq!(
            parse_scorers("fuzz, detection,fuzz,embedding").unwrap(),
            vec![Scorer::Fuzz, Scorer::Detection, Scorer::Embedding]
        );
        assert_eq!(
            parse_scorers("surprisal,simulation,intervention").unwrap(),
            vec![Scorer::Surprisal, Scorer::Simulation, Scorer::Intervention]
        );
        let e = parse_scorers("detect").unwrap_err().to_string();
        assert!(e.contains("unknown scorer `detect`"), "{e}");
        assert!(parse_scorers(",").is_err());
    }
}
