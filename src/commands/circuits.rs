//! `saescope circuits`: find the attention heads a task needs by code overlap, and check them
//! against the heads whose ablation moves the task's logit difference (or a list of heads).

use crate::progress::Tracker;
use anyhow::{Context, Result, bail};
use saescope_activations::model::{Compute, TextModel, device};
use saescope_analysis::circuits::ablate::{Ablation, Pool};
use saescope_analysis::circuits::discover::DiscoverConfig;
use saescope_analysis::circuits::report::{
    CircuitResult, CircuitSpec, GroundTruth, Stage, read_head_list, run as discover, write,
};
use saescope_analysis::circuits::task::by_name;
use saescope_analysis::session::model_path;
use saescope_store::Run;
use saescope_store::circuits::{CircuitDir, Spread};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// ioi, greater-than, successor, induction, or a JSONL file of prompts (`positive`, `negative`,
    /// `answer`, `wrong` per line).
    #[arg(long)]
    pub task: String,
    /// A GGUF file or Hugging Face checkpoint directory (default: the run's model, else the
    /// bundled SmolLM2-135M).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A run whose model to use and under which to write (RUN/circuits/TASK), so the explorer
    /// shows the results.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Where to write (default: RUN/circuits/TASK with --run, else circuits/TASK).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Prompts drawn for a built-in task (each with its corruption).
    #[arg(long, default_value_t = 24)]
    pub prompts: usize,
    /// Seed of the built-in task's prompts.
    #[arg(long, default_value_t = 0)]
    pub task_seed: u64,
    /// Prompts (positives and corruptions together) the shared dictionary is fit on.
    #[arg(long, default_value_t = 10)]
    pub sae_prompts: usize,
    /// Trials, each with its own dictionary seed and fitting prompts.
    #[arg(long, default_value_t = 10)]
    pub seeds: usize,
    /// Codes per (prompt, head): 1 is the argmax.
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    /// The shared dictionary's latents.
    #[arg(long, default_value_t = 200)]
    pub latents: usize,
    /// Its L1 coefficient (the paper's is 0.02).
    #[arg(long, default_value_t = 0.3)]
    pub l1: f64,
    /// Its full-batch Adam steps (the paper's are 500).
    #[arg(long, default_value_t = 150)]
    pub epochs: usize,
    /// Its learning rate (the paper's is 1e-3).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// How each head's write is pooled over a prompt: mean or last.
    #[arg(long, default_value = "mean")]
    pub pool: String,
    /// Do not subtract each head's mean write before fitting (the paper does not).
    #[arg(long)]
    pub no_center: bool,
    /// What the codes are checked against: ablation (mean-ablation), zero-ablation, patching
    /// (each head's output from the prompt's corruption), or a file of heads, one LAYER.HEAD
    /// per line.
    #[arg(long, default_value = "ablation")]
    pub ground_truth: String,
    /// Cut-offs on |ablation effect| that make the circuit, as shares of the logit difference.
    #[arg(long, value_delimiter = ',', default_values_t = [0.02, 0.05, 0.1])]
    pub cutoffs: Vec<f64>,
    /// Layers whose heads are scored, swept and path-patched, e.g. 0,5,9 (default: all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<usize>>,
    /// Heads path-patched, with every pair of them, to check the pairs' scores (the strongest
    /// by the ablation, else by code score; 0: none).
    #[arg(long, default_value_t = 8)]
    pub path_patch: usize,
    /// Where the model runs: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Heads printed.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

impl Args {
    /// The command's defaults for `task`, as `saescope circuits --task TASK` parses them.
    pub fn defaults(task: &str) -> Args {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Parse {
            #[command(flatten)]
            args: Args,
        }
        Parse::parse_from(["circuits", "--task", task]).args
    }
}

fn pool(name: &str) -> Result<Pool> {
    match name {
        "mean" => Ok(Pool::Mean),
        "last" => Ok(Pool::Last),
        other => bail!("--pool {other}: expected mean or last"),
    }
}

fn ground_truth(a: &Args, model: &TextModel) -> Result<GroundTruth> {
    Ok(match a.ground_truth.as_str() {
        "ablation" | "mean-ablation" => GroundTruth::Ablation(Ablation::Mean),
        "zero-ablation" => GroundTruth::Ablation(Ablation::Zero),
        "patching" => GroundTruth::Ablation(Ablation::Corrupted),
        file => {
            let path = PathBuf::from(file);
            if !path.is_file() {
                bail!(
                    "--ground-truth {file}: not ablation, zero-ablation, patching or a file of heads"
                );
            }
            let heads_per_layer = model
                .model
                .hook_shape(saescope_activations::hooks::HookKind::AttnZ)[0];
            let heads = read_head_list(&path, model.model.n_layers(), heads_per_layer)?;
            GroundTruth::Heads { file: path, heads }
        }
    })
}

fn print(result: &CircuitResult, dir: &CircuitDir, top: usize) {
    let s = &result.summary;
    println!(
        "{} on {}: {} prompts, accuracy {:.2}, logit difference {:.2} (corrupted {:.2})",
        s.task, s.model, s.prompts, s.accuracy, s.logit_diff, s.corrupted_logit_diff
    );
    let mut heads: Vec<_> = result.heads.iter().collect();
    heads.sort_by_key(|h| h.rank);
    println!(
        "heads by code score (mean over {} trials):",
        s.fvu.values.len()
    );
    for h in heads.iter().take(top) {
        let effect = h
            .ablation_effect
            .map_or(String::new(), |e| format!(", ablation effect {e:+.3}"));
        let direct = h
            .direct_effect
            .map_or(String::new(), |e| format!(", path-patched {e:+.3}"));
        let mark = if h.in_circuit { " *" } else { "" };
        println!(
            "  {:>3}. L{}H{}  code score {:.1} ± {:.1}{effect}{direct}{mark}",
            h.rank, h.layer, h.head, h.code_score, h.code_score_std
        );
    }
    for a in &s.agreement {
        println!(
            "{} ({} heads): node ROC AUC {}, normalised {}, edge {}",
            a.circuit,
            a.heads,
            Spread::or_dash(&a.node_auc),
            Spread::or_dash(&a.normalised_auc),
            Spread::or_dash(&a.edge_auc)
        );
    }
    if let Some(r) = &s.spearman {
        println!("Spearman's ρ of code score and |ablation effect|: {r}");
    }
    if let Some(p) = &s.path_patching {
        let heads: Vec<String> = p
            .candidates
            .iter()
            .map(|(l, h)| format!("L{l}H{h}"))
            .collect();
        println!(
            "path patching of {} (by {}), {} pairs, {:.1} s:",
            heads.join(" "),
            p.chosen_by,
            p.pairs,
            p.seconds
        );
        for a in &p.agreement {
            println!(
                "  |path effect| > {:.3} ({} pairs): edge ROC AUC {}",
                a.cutoff,
                a.edges,
                Spread::or_dash(&a.edge_auc)
            );
        }
        if let Some(r) = &p.spearman {
            println!("  Spearman's ρ of pair code score and |path effect|: {r}");
        }
    }
    let t = &s.runtimes;
    print!(
        "code ranking {:.1} s (passes {:.1} s + one trial {:.1} s)",
        t.code_ranking, t.head_writes, t.trial
    );
    match (t.ablation_sweep, t.speedup) {
        (Some(sweep), Some(x)) => println!("; ablation sweep {sweep:.1} s, {x:.1}x slower"),
        _ => println!(),
    }
    println!("wrote {}", dir.path().display());
}

pub fn run(a: Args) -> Result<()> {
    let run_dir = a.run.as_deref();
    let opened = run_dir.map(Run::open).transpose()?;
    let path = model_path(a.model.as_deref(), opened.as_ref());
    let model = TextModel::open(&path, device(&a.device)?, Compute::F32)
        .with_context(|| format!("opening the model {}", path.display()))?;
    let task = by_name(&a.task, &model.tokenizer, a.prompts, a.task_seed)?;
    let spec = CircuitSpec {
        config: DiscoverConfig {
            pool: pool(&a.pool)?,
            sae_prompts: a.sae_prompts,
            top_k: a.top_k,
            sae: saescope_sae::l1::L1Config {
                latents: a.latents,
                l1: a.l1,
                lr: a.lr,
                epochs: a.epochs,
                seed: 0,
            },
            seeds: a.seeds,
            center: !a.no_center,
        },
        ground_truth: ground_truth(&a, &model)?,
        cutoffs: a.cutoffs.clone(),
        layers: a.layers.clone(),
        path_candidates: a.path_patch,
        ..CircuitSpec::default()
    };
    let dir = match (&a.out, run_dir) {
        (Some(out), _) => CircuitDir::new(out),
        (None, Some(r)) => CircuitDir::in_run(r, &task.name),
        (None, None) => CircuitDir::new(PathBuf::from("circuits").join(&task.name)),
    };
    if saescope_store::remote::is_url(dir.path()) {
        bail!(
            "{}: circuit results are written to a local folder; give one with --out",
            dir.path().display()
        );
    }
    let (mut trials, mut sweep, mut paths) = (
        Tracker::new("trials", "trials"),
        Tracker::new("ablation", "heads"),
        Tracker::new("path patching", "passes"),
    );
    let result = discover(
        &model,
        &path.display().to_string(),
        &task,
        &spec,
        &mut |stage| match stage {
            Stage::Passes => {}
            Stage::Trial { done, of } => trials.update(done as u64, of as u64),
            Stage::Sweep { done, of, .. } => sweep.update(done as u64, of as u64),
            Stage::Paths { done, of } => paths.update(done as u64, of as u64),
        },
    )
    .map_err(|e| match (&a.layers, e) {
        // The library names the field `layers`; the user typed the flag.
        (Some(_), saescope_analysis::AnalysisError::Config(m)) if m.starts_with("layers: ") => {
            anyhow::anyhow!("--layers: {}", &m["layers: ".len()..])
        }
        (_, e) => e.into(),
    })?;
    trials.finish();
    sweep.finish();
    paths.finish();
    write(&dir, &result)?;
    print(&result, &dir, a.top);
    Ok(())
}
