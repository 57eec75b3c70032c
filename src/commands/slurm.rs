//! `saescope slurm ...`: write (and with `--submit`, submit) Slurm job arrays for work that is
//! cut into independent tasks (a harvest's parts, one dictionary each), with each task's logs
//! under the run's `slurm/logs/`.

use super::{analyze, harvest, train};
use anyhow::{Context, Result, bail};
use clap::Parser;
use saescope_jobs::slurm::{self, Job, JobId, Resources, Work};

use saescope_store::{DictDir, Manifest, features, parts};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Harvest a run as a job array of parts (`harvest --part I/N`, one task each), then merge
    /// the parts in a job that waits for them. Re-submitting runs only the parts not complete.
    Harvest(HarvestArgs),
    /// Train dictionaries as a job array, one task per hook (and per size), as sparsify spreads
    /// a model's modules over GPUs. Re-submitting runs only the dictionaries not finished.
    Train(TrainArgs),
    /// Build dictionaries' feature stores as a job array, one dictionary per task.
    /// Re-submitting runs only those without a finished feature store.
    Analyze(AnalyzeArgs),
}

/// Where and how the tasks run.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// The Slurm partition to run in.
    #[arg(long)]
    partition: Option<String>,
    /// Nodes the array may hold at once: at most this many tasks (times --gpus-per-node) run
    /// together. Default: as many as Slurm allows.
    #[arg(long)]
    nodes: Option<u32>,
    /// GPUs on each node: each task then takes one GPU and runs the model on it (`--device cuda`
    /// unless the command names a device).
    #[arg(long)]
    gpus_per_node: Option<u32>,
    /// CPU cores for each task.
    #[arg(long)]
    cpus_per_task: Option<u32>,
    /// Memory for each task, as Slurm writes it (e.g. 32G).
    #[arg(long)]
    mem: Option<String>,
    /// Time limit of each task, as Slurm writes it (e.g. 4:00:00).
    #[arg(long)]
    time: Option<String>,
    /// Submit the scripts with sbatch; without it they are written and the commands printed.
    #[arg(long)]
    submit: bool,
    /// Start only once these Slurm jobs have succeeded (comma-separated ids).
    #[arg(long, value_delimiter = ',')]
    after: Vec<String>,
}

impl ClusterArgs {
    fn resources(&self) -> Resources {
        let gpus = self.gpus_per_node.filter(|&g| g > 0);
        Resources {
            partition: self.partition.clone(),
            cpus_per_task: self.cpus_per_task,
            gpus_per_task: gpus.map(|_| 1),
            memory: self.mem.clone(),
            time: self.time.clone(),
            max_running: self.nodes.map(|n| n * gpus.unwrap_or(1)),
        }
    }
}

#[derive(clap::Args)]
pub struct HarvestArgs {
    /// Parts to cut the run into, one array task each (default: --nodes x --gpus-per-node).
    #[arg(long)]
    parts: Option<u32>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// After `--`: the harvest's arguments, `--out RUN` and any other of `saescope harvest`'s
    /// but --part and --resume, which each task adds.
    #[arg(last = true, required = true, value_name = "HARVEST ARGS")]
    harvest: Vec<String>,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Hook points to train on, one dictionary (and task) each.
    #[arg(long, value_delimiter = ',', required = true)]
    hooks: Vec<String>,
    /// Dictionary sizes: a task for each hook and size, written to HOOK-METHOD-LATENTS (in
    /// RUN/dictionaries, or in --out when training from the model).
    #[arg(long, value_delimiter = ',')]
    latents: Vec<usize>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// After `--`: `--run RUN` and any other of `saescope train`'s arguments but --hook,
    /// --latents, --out and --resume, which each task sets; or `--model M --out DIR ...` to
    /// train from the model, each task streaming its own forward passes into DIR.
    #[arg(last = true, required = true, value_name = "TRAIN ARGS")]
    train: Vec<String>,
}

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Dictionary directories to analyse, one task each.
    #[arg(long, value_delimiter = ',', required_unless_present = "run")]
    dicts: Vec<PathBuf>,
    /// Or every dictionary under RUN/dictionaries.
    #[arg(long, conflicts_with = "dicts")]
    run: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// After `--`: any of `saescope analyze`'s arguments but --dict and --out, which each task
    /// sets.
    #[arg(last = true, value_name = "ANALYZE ARGS")]
    analyze: Vec<String>,
}

/// `saescope analyze`'s arguments, parsed to check them before anything is submitted.
#[derive(Parser)]
#[command(name = "saescope analyze")]
struct AnalyzeCommand {
    #[command(flatten)]
    _args: analyze::Args,
}

/// `saescope train`'s arguments, parsed to check them before anything is submitted.
#[derive(Parser)]
#[command(name = "saescope train")]
struct TrainCommand {
    #[command(flatten)]
    args: train::Args,
}

/// `saescope harvest`'s arguments, parsed to check them before anything is submitted.
#[derive(Parser)]
#[command(name = "saescope harvest")]
struct HarvestCommand {
    #[command(flatten)]
    args: harvest::Args,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Harvest(a) => submit_harvest(a),
        Command::Train(a) => submit_train(a),
        Command::Analyze(a) => submit_analyze(a),
    }
}

fn submit_analyze(a: AnalyzeArgs) -> Result<()> {
    refuse_flags(&a.analyze, &["--dict", "--out"], "analysis")?;
    parse_after::<AnalyzeCommand>(
        &["saescope analyze", "--dict", "DICT"],
        &a.analyze,
        "analysis",
    )?;
    let dicts: Vec<DictDir> = match &a.run {
        Some(run) => {
            let found = DictDir::list(run);
            if found.is_empty() {
                bail!(
                    "{}: no dictionaries under {}/dictionaries yet; name them with --dicts",
                    run.display(),
                    run.display()
                );
            }
            found
        }
        None => a.dicts.iter().map(DictDir::new).collect(),
    };
    let exe = std::env::current_exe().context("finding the saescope binary")?;
    let gpus = a.cluster.gpus_per_node.unwrap_or(0);
    let mut left = Vec::new();
    for (task, dict) in dicts.iter().enumerate() {
        let path = absolute(dict.path())?;
        let done = path.join("features").join(features::SUMMARY_FILE).is_file();
        println!(
            "  task {task}: {}{}",
            path.display(),
            if done { " (analysed)" } else { "" }
        );
        if !done {
            let mut command = vec![exe.display().to_string(), "analyze".to_owned()];
            command.extend(["--dict".to_owned(), path.display().to_string()]);
            command.extend(a.analyze.iter().cloned());
            on_gpu(&mut command, &a.analyze, gpus);
            left.push((task as u32, command));
        }
    }
    // The scripts go beside the dictionaries' run when they share one, else beside the first.
    let base = a.run.clone().unwrap_or_else(|| {
        dicts[0]
            .enclosing_run()
            .unwrap_or_else(|| dicts[0].path().to_owned())
    });
    let dir = slurm_dir(&absolute(&base)?)?;
    println!(
        "{} dictionaries, {} to analyse; scripts in {}",
        dicts.len(),
        left.len(),
        dir.display()
    );
    if left.is_empty() {
        println!("every dictionary is analysed: nothing to submit");
        return Ok(());
    }
    submit_per_task(left, &dir, &a.cluster, "analyze")
}

/// Writes the job array `saescope-WHAT` of `tasks` (a command each) to `DIR/WHAT.sbatch` and,
/// when asked, submits it after the jobs named by `--after`.
fn submit_per_task(
    tasks: Vec<(u32, Vec<String>)>,
    dir: &Path,
    cluster: &ClusterArgs,
    what: &str,
) -> Result<()> {
    let job = Job {
        name: format!("saescope-{what}"),
        work: Work::PerTask(tasks),
        log_dir: dir.join("logs"),
        workdir: std::env::current_dir().context("finding the working directory")?,
        resources: cluster.resources(),
    };
    let path = dir.join(format!("{what}.sbatch"));
    job.write(&path)?;
    if !cluster.submit {
        println!("submit with: sbatch {}", path.display());
        return Ok(());
    }
    refuse_while_running(dir, what)?;
    let after: Vec<JobId> = cluster.after.iter().cloned().map(JobId).collect();
    let id = slurm::submit(&path, &after)?;
    record(dir, what, std::slice::from_ref(&id))?;
    println!("{what} job {id}");
    println!(
        "watch with `squeue -u $USER`; logs in {}",
        job.log_dir.display()
    );
    Ok(())
}

fn submit_train(a: TrainArgs) -> Result<()> {
    // From the model, each task streams its own forward passes into the --out folder given;
    // on a run, each task's dictionary goes to RUN/dictionaries.
    let streaming = gives(&a.train, "--model");
    let set_by_tasks: &[&str] = if streaming {
        &["--hook", "--latents", "--resume", "--if-incomplete"]
    } else {
        &[
            "--hook",
            "--latents",
            "--out",
            "--resume",
            "--if-incomplete",
        ]
    };
    refuse_flags(&a.train, set_by_tasks, "training")?;
    if let Some(h) = a.hooks.iter().find(|h| h.contains('*')) {
        bail!("name each hook for --hooks (`{h}` has a `*`): every hook is a task of its own");
    }
    let parsed = parse_after::<TrainCommand>(
        &["saescope train", "--hook", &a.hooks[0]],
        &a.train,
        "training",
    )?
    .args;
    let method = train::config(&parsed)?.method.name();
    let base = match (&parsed.run, &parsed.out) {
        (Some(run), _) => run,
        (None, Some(out)) => out,
        (None, None) => bail!(
            "training from the model needs --out after `--`: the folder its dictionaries go in"
        ),
    };
    let base = absolute(base)?;
    let sizes: Vec<Option<usize>> = if a.latents.is_empty() {
        vec![None]
    } else {
        a.latents.iter().copied().map(Some).collect()
    };
    let exe = std::env::current_exe().context("finding the saescope binary")?;
    let gpus = a.cluster.gpus_per_node.unwrap_or(0);
    let mut all = Vec::new();
    let mut left = Vec::new();
    for hook in &a.hooks {
        for &size in &sizes {
            let mut command = vec![exe.display().to_string(), "train".to_owned()];
            command.extend(a.train.iter().cloned());
            command.extend(["--hook".to_owned(), hook.clone()]);
            if let Some(n) = size {
                command.extend(["--latents".to_owned(), n.to_string()]);
            }
            // Named as `train --model` names them: hook, method, and the size when given.
            let name = match size {
                Some(n) => format!("{hook}-{method}-{n}"),
                None => format!("{hook}-{method}"),
            };
            let out = if streaming {
                DictDir::new(base.join(name))
            } else {
                let out = DictDir::in_run(&base, &name);
                command.extend(["--out".to_owned(), out.path().display().to_string()]);
                command.push("--if-incomplete".to_owned());
                out
            };
            on_gpu(&mut command, &a.train, gpus);
            let task = all.len() as u32;
            let (finished, _) = out.training_state()?;
            all.push((task, out.path().to_owned()));
            if !finished {
                left.push((task, command));
            }
        }
    }
    let dir = slurm_dir(&base)?;
    println!(
        "{} dictionaries, {} to train; scripts in {}",
        all.len(),
        left.len(),
        dir.display()
    );
    for (task, out) in &all {
        println!("  task {task}: {}", out.display());
    }
    if left.is_empty() {
        println!("every dictionary is trained: nothing to submit");
        return Ok(());
    }
    submit_per_task(left, &dir, &a.cluster, "train")
}

fn submit_harvest(a: HarvestArgs) -> Result<()> {
    let parsed = parse_after::<HarvestCommand>(&["saescope harvest"], &a.harvest, "harvest")?.args;
    if parsed.part.is_some() || parsed.resume {
        bail!("leave --part and --resume out of the harvest's arguments: each task adds its own");
    }
    let gpus = a.cluster.gpus_per_node.unwrap_or(0);
    let count = match (a.parts, a.cluster.nodes) {
        (Some(0), _) => bail!("--parts must be at least 1"),
        (Some(n), _) => n,
        (None, Some(nodes)) => nodes * gpus.max(1),
        (None, None) => bail!("say how many parts to cut the run into: --parts N (or --nodes)"),
    };
    let run = absolute(&parsed.out)?;
    let Some(tasks) = tasks_left(&run, count)? else {
        println!(
            "{} is complete (merged from {count} parts): nothing to submit",
            run.display()
        );
        return Ok(());
    };

    let exe = std::env::current_exe().context("finding the saescope binary")?;
    let mut command = vec![exe.display().to_string(), "harvest".to_owned()];
    command.extend(a.harvest.iter().cloned());
    on_gpu(&mut command, &a.harvest, gpus);
    command.extend([
        "--part".to_owned(),
        format!("{{task}}/{count}"),
        "--resume".to_owned(),
    ]);
    let dir = slurm_dir(&run)?;
    let workdir = std::env::current_dir().context("finding the working directory")?;
    let array = Job {
        name: "saescope-harvest".into(),
        work: Work::Array {
            tasks: tasks.clone(),
            command,
        },
        log_dir: dir.join("logs"),
        workdir: workdir.clone(),
        resources: a.cluster.resources(),
    };
    let merge = Job {
        name: "saescope-merge".into(),
        work: Work::Single(vec![
            exe.display().to_string(),
            "store".into(),
            "merge".into(),
            run.display().to_string(),
        ]),
        log_dir: dir.join("logs"),
        workdir,
        resources: Resources {
            partition: a.cluster.partition.clone(),
            cpus_per_task: Some(1),
            ..Resources::default()
        },
    };
    let (array_path, merge_path) = (dir.join("harvest.sbatch"), dir.join("merge.sbatch"));
    if !tasks.is_empty() {
        array.write(&array_path)?;
    }
    merge.write(&merge_path)?;
    println!(
        "{count} parts, {} to run (tasks {}); scripts in {}",
        tasks.len(),
        if tasks.is_empty() {
            "none: only the merge is left".to_owned()
        } else {
            slurm::ranges(&tasks)
        },
        dir.display()
    );
    if !a.cluster.submit {
        println!("submit with:");
        if !tasks.is_empty() {
            println!("  sbatch --parsable {}", array_path.display());
            println!(
                "  sbatch --dependency=afterok:<that job id> {}",
                merge_path.display()
            );
        } else {
            println!("  sbatch {}", merge_path.display());
        }
        return Ok(());
    }
    refuse_while_running(&dir, "harvest")?;
    let mut after: Vec<JobId> = a.cluster.after.iter().cloned().map(JobId).collect();
    let mut submitted = Vec::new();
    if !tasks.is_empty() {
        let id = slurm::submit(&array_path, &after)?;
        println!("harvest job {id}");
        after = vec![id.clone()];
        submitted.push(id);
    }
    let id = slurm::submit(&merge_path, &after)?;
    println!("merge job {id}");
    submitted.push(id);
    record(&dir, "harvest", &submitted)?;
    println!(
        "watch with `squeue -u $USER`; logs in {}",
        dir.join("logs").display()
    );
    Ok(())
}

/// Where the ids of the jobs last submitted for `what` are kept, beside their scripts.
fn record_path(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!("{what}-jobs.txt"))
}

/// Keeps the ids of the jobs just submitted for `what`, one a line.
fn record(dir: &Path, what: &str, ids: &[JobId]) -> Result<()> {
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    saescope_store::write_atomic(&record_path(dir, what), text.as_bytes())?;
    Ok(())
}

/// Refuses to submit `what` again while jobs submitted for it before are queued or running:
/// they would work on the same parts or dictionaries.
fn refuse_while_running(dir: &Path, what: &str) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(record_path(dir, what)) else {
        return Ok(());
    };
    let ids: Vec<JobId> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| JobId(l.trim().to_owned()))
        .collect();
    let running = slurm::active(&ids)?;
    if !running.is_empty() {
        let list: Vec<String> = running.iter().map(|j| j.to_string()).collect();
        bail!(
            "the {what} jobs submitted before ({}) are still queued or running; wait for them (squeue -j {}) or cancel them (scancel {}) before submitting again",
            list.join(", "),
            list.join(","),
            list.join(" ")
        );
    }
    Ok(())
}

/// The parts still to harvest, or `None` when the run is merged already. Refuses a directory
/// that holds a run harvested whole, or parts of another count.
fn tasks_left(run: &Path, count: u32) -> Result<Option<Vec<u32>>> {
    if Manifest::exists_in(run)? {
        let m = Manifest::load(run)?;
        if m.complete && m.extra.get("parts").and_then(|v| v.as_u64()) == Some(count as u64) {
            return Ok(None);
        }
    }
    parts::check_count(run, count)?;
    if !parts::started(run)? {
        return Ok(Some((0..count).collect()));
    }
    Ok(Some(parts::status(run)?.pending()))
}

/// Parses the arguments given after `--` as the command `prefix` names would (with `prefix`'s
/// own arguments first), so a mistake is reported before anything is written or submitted.
fn parse_after<P: Parser>(prefix: &[&str], args: &[String], what: &str) -> Result<P> {
    let argv = prefix
        .iter()
        .map(|a| (*a).to_owned())
        .chain(args.iter().cloned());
    P::try_parse_from(argv).map_err(|e| anyhow::anyhow!("the {what}'s arguments after `--`: {e}"))
}

/// Refuses arguments after `--` that each task sets itself.
fn refuse_flags(args: &[String], flags: &[&str], what: &str) -> Result<()> {
    match flags.iter().find(|f| gives(args, f)) {
        Some(flag) => bail!("leave {flag} out of the {what}'s arguments: each task sets its own"),
        None => Ok(()),
    }
}

/// Where a run's job scripts, logs and job ids go: its `slurm/` folder, or for a run on object
/// storage (where Slurm cannot write its logs) `saescope-slurm/SCHEME/BUCKET/PREFIX/` in the
/// working directory.
fn slurm_dir(run: &Path) -> Result<PathBuf> {
    match run.to_str().and_then(|u| u.split_once("://")) {
        Some((scheme, rest)) if saescope_store::remote::is_url(run) => {
            absolute(&Path::new("saescope-slurm").join(scheme).join(rest))
        }
        _ => Ok(run.join("slurm")),
    }
}

/// `path` made absolute, for scripts that run elsewhere (a URL stays as it is).
fn absolute(path: &Path) -> Result<PathBuf> {
    if saescope_store::remote::is_url(path) {
        return Ok(path.to_owned());
    }
    std::path::absolute(path)
        .with_context(|| format!("{}: cannot make the path absolute", path.display()))
}

/// Whether the command-line arguments `args` give `flag` (as `--flag V` or `--flag=V`).
fn gives(args: &[String], flag: &str) -> bool {
    args.iter()
        .any(|x| x == flag || x.starts_with(&format!("{flag}=")))
}

/// A task on a GPU runs its model there, unless the user's arguments name a device.
fn on_gpu(command: &mut Vec<String>, user_args: &[String], gpus: u32) {
    if gpus > 0 && !gives(user_args, "--device") {
        command.extend(["--device".to_owned(), "cuda".to_owned()]);
    }
}
