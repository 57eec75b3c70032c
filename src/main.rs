//! `saescope`: the command-line front of the workbench. Each subcommand is a thin layer that
//! parses arguments, shows progress and formats results; the work lives in the library crates.

mod commands;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "saescope", version, about = "Sparse-dictionary interpretability workbench", long_about = None)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors, no progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the bundled model, embedding model and corpora into the cache (idempotent).
    Setup(commands::setup::Args),
    /// Report libtorch, devices and installed assets, and run a tiny tensor operation on each device.
    Doctor(commands::doctor::Args),
    /// The end-to-end demo on the bundled model and corpus.
    Demo(commands::demo::Args),
    /// Run a model over a corpus and store activations at hook points as an activation run.
    Harvest(commands::harvest::Args),
    /// Train a sparse dictionary (TopK, BatchTopK, MP-SAE, GBA, SNMF) on one hook of a run.
    Train(commands::train::Args),
    /// Splice a dictionary into the model over held-out text: CE-loss recovered, KL, reconstruction.
    Eval(commands::eval::Args),
    /// Build a dictionary's feature store: statistics, contexts, logit effects, neighbours.
    Analyze(commands::analyze::Args),
    /// Draw each latent's example windows for autointerp: train (explainer) and test (scorers)
    /// sets from disjoint halves of the run.
    Examples(commands::examples::Args),
    /// Explain latents from their example windows with the bundled model or any
    /// OpenAI-compatible server.
    Explain(commands::explain::Args),
    /// Score explanations against held-out windows (detection, fuzzing) beside two controls,
    /// with the bundled model or any OpenAI-compatible server.
    Score(commands::score::Args),
    /// Explain latents and score the explanations in one go (explain, then score).
    Autointerp(commands::autointerp::Args),
    /// The prompt view: each token's most active features, and attribution by head and source.
    Inspect(commands::inspect::Args),
    /// Continue prompts with a model: greedy or sampled, plain text or through its chat template.
    Generate(commands::generate::Args),
    /// Generate with a dictionary's features pushed on: clean and steered text side by side.
    Steer(commands::steer::Args),
    /// Find the attention heads a task needs by code overlap, checked against ablation.
    Circuits(commands::circuits::Args),
    /// The desktop explorer: browse a run's dictionaries, features, prompts and heads.
    Explore(commands::explore::Args),
    /// Export a feature store (to Neuronpedia's dashboard JSON) or a TopK dictionary (to
    /// sparsify's layout).
    #[command(subcommand)]
    Export(commands::export::Command),
    /// Import explanations made by other tools (delphi).
    #[command(subcommand)]
    Import(commands::export::ImportCommand),
    /// Activation runs: inspect, merge the parts of one harvested in parts, and benchmark.
    #[command(subcommand)]
    Store(commands::store::Command),
    /// Run work across a Slurm cluster as job arrays: a harvest in parts and its merge, one
    /// dictionary per task for training and for analysis.
    #[command(subcommand)]
    Slurm(commands::slurm::Command),
}

fn main() -> ExitCode {
    // Before libtorch allocates anything: its large per-layer tensors are then reused rather
    // than faulted in afresh (see saescope_kernels::memory).
    saescope_kernels::keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    progress::set_quiet(cli.quiet);
    if matches!(cli.command, Command::Analyze(_)) {
        passive_openmp();
    }
    let result = match cli.command {
        Command::Setup(a) => commands::setup::run(a),
        Command::Doctor(a) => commands::doctor::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Harvest(a) => commands::harvest::run(a),
        Command::Train(a) => commands::train::run(a).map(|_| ()),
        Command::Eval(a) => commands::eval::run(a),
        Command::Analyze(a) => commands::analyze::run(a),
        Command::Examples(a) => commands::examples::run(a),
        Command::Explain(a) => commands::explain::run(a),
        Command::Score(a) => commands::score::run(a),
        Command::Autointerp(a) => commands::autointerp::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Steer(a) => commands::steer::run(a),
        Command::Circuits(a) => commands::circuits::run(a),
        Command::Explore(a) => commands::explore::run(a),
        Command::Export(c) => commands::export::run(c),
        Command::Import(c) => commands::export::import(c),
        Command::Slurm(c) => commands::slurm::run(c),
        Command::Store(c) => commands::store::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `analyze` folds on idle-priority threads beside libtorch's encoder; OpenMP threads that wait
/// passively leave it their idle cycles (see `reexec_with_passive_openmp`). A policy the user
/// set is kept.
fn passive_openmp() {
    use saescope_analysis::features::{PASSIVE_OPENMP_MARK, reexec_with_passive_openmp};
    if let Some(e) = reexec_with_passive_openmp() {
        tracing::warn!(
            "could not restart with OMP_WAIT_POLICY=PASSIVE ({e}); analysing with the default policy"
        );
    } else if std::env::var_os(PASSIVE_OPENMP_MARK).is_some() {
        tracing::info!(
            "OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE), so the analysis can use their idle cycles"
        );
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .without_time()
        .init();
}

/// Colour in log lines only on a terminal, and never when `NO_COLOR` is set (no-color.org):
/// a redirected log stays plain text.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}
