//! Slurm batch scripts and their submission.
//!
//! A [`Job`] renders to a batch script whose `#SBATCH` lines carry everything a user would check
//! in it (name, array, logs, resources, working directory); the command runs under `exec`, so
//! Slurm sees its exit status. Submission goes through `sbatch --parsable`, the interface Slurm
//! keeps stable for scripts, and a dependency on a job array waits for all of its tasks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What can go wrong writing or submitting a job.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// The script could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A Slurm client command (`sbatch`, `squeue`) is not on the PATH.
    #[error(
        "cannot run Slurm's `{command}` ({source}): submit from a machine with Slurm's client commands, or leave out --submit and submit the script yourself"
    )]
    NoClient {
        /// The command.
        command: &'static str,
        /// Why it did not run.
        #[source]
        source: std::io::Error,
    },
    /// `sbatch` refused the script.
    #[error("sbatch refused {script}: {message}")]
    Refused {
        /// The script submitted.
        script: PathBuf,
        /// What sbatch said.
        message: String,
    },
    /// A job description that cannot become a script.
    #[error("{0}")]
    Invalid(String),
}

/// A Slurm job id, as `sbatch --parsable` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobId(pub String);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What each task asks of the cluster; `None` leaves the choice to the cluster's defaults.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    /// The partition (`--partition`).
    pub partition: Option<String>,
    /// CPU cores for each task (`--cpus-per-task`).
    pub cpus_per_task: Option<u32>,
    /// GPUs for each task (`--gpus-per-task`).
    pub gpus_per_task: Option<u32>,
    /// Memory for each task, e.g. `16G` (`--mem`).
    pub memory: Option<String>,
    /// Time limit, e.g. `4:00:00` (`--time`).
    pub time: Option<String>,
    /// At most this many of an array's tasks run at once (`--array=...%N`).
    pub max_running: Option<u32>,
}

/// What a job runs: the same command in every task of an array, a command of its own in each
/// task, or one command.
#[derive(Clone, Debug)]
pub enum Work {
    /// An array whose tasks run one command; `{task}` in an argument becomes the task number
    /// (`$SLURM_ARRAY_TASK_ID`).
    Array {
        /// The task numbers.
        tasks: Vec<u32>,
        /// The command, one argument per element.
        command: Vec<String>,
    },
    /// An array whose tasks each run their own command, by task number.
    PerTask(Vec<(u32, Vec<String>)>),
    /// A single job.
    Single(Vec<String>),
}

impl Work {
    /// The array's task numbers, or `None` for a single job.
    pub fn tasks(&self) -> Option<Vec<u32>> {
        match self {
            Work::Array { tasks, .. } => Some(tasks.clone()),
            Work::PerTask(commands) => Some(commands.iter().map(|(t, _)| *t).collect()),
            Work::Single(_) => None,
        }
    }
}

/// One batch script.
#[derive(Clone, Debug)]
pub struct Job {
    /// `--job-name`, e.g. `saescope-harvest`.
    pub name: String,
    /// What it runs.
    pub work: Work,
    /// Where the logs go: `NAME-JOB_TASK.out` for an array's tasks, `NAME-JOB.out` else.
    pub log_dir: PathBuf,
    /// The directory the command runs in (`--chdir`).
    pub workdir: PathBuf,
    /// What each task asks for.
    pub resources: Resources,
}

impl Job {
    /// The batch script.
    pub fn script(&self) -> Result<String, SlurmError> {
        let r = &self.resources;
        let values = [
            ("job name", Some(self.name.clone())),
            ("log folder", Some(self.log_dir.display().to_string())),
            (
                "working directory",
                Some(self.workdir.display().to_string()),
            ),
            ("partition", r.partition.clone()),
            ("memory", r.memory.clone()),
            ("time limit", r.time.clone()),
        ];
        for (what, value) in values {
            if let Some(v) = value
                && (v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '%'))
            {
                return Err(SlurmError::Invalid(format!(
                    "the {what} `{v}` cannot go in a #SBATCH line: Slurm reads it up to the first space and expands `%`; choose one without spaces or `%`"
                )));
            }
        }
        let mut s = String::from("#!/bin/bash\n");
        let mut line = |k: &str, v: &str| s.push_str(&format!("#SBATCH --{k}={v}\n"));
        line("job-name", &self.name);
        let log = match self.work.tasks() {
            Some(tasks) => {
                let mut array = array_spec(&tasks)?;
                if let Some(n) = self.resources.max_running {
                    array.push_str(&format!("%{n}"));
                }
                line("array", &array);
                format!("{}-%A_%a.out", self.name)
            }
            None => format!("{}-%j.out", self.name),
        };
        line("output", &self.log_dir.join(log).display().to_string());
        line("chdir", &self.workdir.display().to_string());
        line("ntasks", "1");
        if let Some(p) = &r.partition {
            line("partition", p);
        }
        if let Some(c) = r.cpus_per_task {
            line("cpus-per-task", &c.to_string());
        }
        if let Some(g) = r.gpus_per_task {
            line("gpus-per-task", &g.to_string());
        }
        if let Some(m) = &r.memory {
            line("mem", m);
        }
        if let Some(t) = &r.time {
            line("time", t);
        }
        s.push_str("set -euo pipefail\n");
        match &self.work {
            Work::Array { command, .. } | Work::Single(command) => {
                s.push_str(&format!("{}\n", exec(command, &self.name)?));
            }
            Work::PerTask(commands) => {
                s.push_str("case \"$SLURM_ARRAY_TASK_ID\" in\n");
                for (task, command) in commands {
                    s.push_str(&format!("  {task}) {} ;;\n", exec(command, &self.name)?));
                }
                s.push_str(
                    "  *) echo \"no task $SLURM_ARRAY_TASK_ID in this array\" >&2; exit 2 ;;\nesac\n",
                );
            }
        }
        Ok(s)
    }

    /// Writes the script to `path` (through a temporary name) and makes the log folder.
    pub fn write(&self, path: &Path) -> Result<(), SlurmError> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| SlurmError::Io { path: p, source }
        };
        let script = self.script()?;
        std::fs::create_dir_all(&self.log_dir).map_err(io(&self.log_dir))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let tmp = path.with_extension("sbatch.tmp");
        std::fs::write(&tmp, script).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }
}

/// Submits the script at `path` with `sbatch`, after every job in `after` has succeeded (a
/// dependency on an array waits for all its tasks; if one fails, Slurm cancels this job).
pub fn submit(path: &Path, after: &[JobId]) -> Result<JobId, SlurmError> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    if !after.is_empty() {
        let ids: Vec<&str> = after.iter().map(|j| j.0.as_str()).collect();
        cmd.arg(format!("--dependency=afterok:{}", ids.join(":")));
        cmd.arg("--kill-on-invalid-dep=yes");
    }
    let out = cmd
        .arg(path)
        .output()
        .map_err(|source| SlurmError::NoClient {
            command: "sbatch",
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `ID` or `ID;CLUSTER`.
    let id = stdout.trim().split(';').next().unwrap_or("").to_owned();
    if !out.status.success() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(SlurmError::Refused {
            script: path.to_owned(),
            message: format!("{} {}", err.trim(), stdout.trim())
                .trim()
                .to_owned(),
        });
    }
    Ok(JobId(id))
}

/// `exec` and the quoted command.
fn exec(command: &[String], job: &str) -> Result<String, SlurmError> {
    if command.is_empty() {
        return Err(SlurmError::Invalid(format!(
            "job `{job}` has an empty command"
        )));
    }
    let args: Vec<String> = command.iter().map(|a| quote_with_task(a)).collect();
    Ok(format!("exec {}", args.join(" ")))
}

/// The jobs among `ids` that Slurm still has queued or running (an array counts while any of
/// its tasks does). Ids Slurm no longer knows count as finished.
pub fn active(ids: &[JobId]) -> Result<Vec<JobId>, SlurmError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<&str> = ids.iter().map(|j| j.0.as_str()).collect();
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i", "-j", &list.join(",")])
        .output()
        .map_err(|source| SlurmError::NoClient {
            command: "squeue",
            source,
        })?;
    // squeue refuses the whole list once one id is unknown to it; then ask for each alone.
    if !out.status.success() {
        if ids.len() == 1 {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for id in ids {
            found.extend(active(std::slice::from_ref(id))?);
        }
        return Ok(found);
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    Ok(ids
        .iter()
        .filter(|id| {
            listed.lines().any(|l| {
                let l = l.trim();
                l == id.0
                    || l.strip_prefix(&id.0)
                        .is_some_and(|rest| rest.starts_with('_'))
            })
        })
        .cloned()
        .collect())
}

/// Task numbers as Slurm's array syntax, runs joined: `0-3,7,9-10` (sorted, each once).
pub fn ranges(tasks: &[u32]) -> String {
    let mut t = tasks.to_vec();
    t.sort_unstable();
    t.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let mut j = i;
        while j + 1 < t.len() && t[j + 1] == t[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            t[i].to_string()
        } else {
            format!("{}-{}", t[i], t[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

fn array_spec(tasks: &[u32]) -> Result<String, SlurmError> {
    if tasks.is_empty() {
        return Err(SlurmError::Invalid(
            "a job array needs at least one task".into(),
        ));
    }
    Ok(ranges(tasks))
}

/// One argument for bash: single-quoted, with `{task}` left outside the quotes as the task id.
fn quote_with_task(arg: &str) -> String {
    arg.split("{task}")
        .map(|piece| format!("'{}'", piece.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join("\"${SLURM_ARRAY_TASK_ID}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Vec<String> {
        vec![
            "/bin/saescope".into(),
            "--part".into(),
            "{task}/4".into(),
            "it's".into(),
        ]
    }

    fn job(tasks: Option<Vec<u32>>) -> Job {
        Job {
            name: "saescope-harvest".into(),
            work: match tasks {
                Some(tasks) => Work::Array {
                    tasks,
                    command: command(),
                },
                None => Work::Single(command()),
            },
            log_dir: "/runs/r/slurm/logs".into(),
            workdir: "/home/u".into(),
            resources: Resources {
                partition: Some("gpu".into()),
                gpus_per_task: Some(1),
                max_running: Some(2),
                ..Resources::default()
            },
        }
    }

    #[test]
    fn an_array_script_carries_its_tasks_logs_and_resources() {
        let s = job(Some(vec![3, 0, 1, 7])).script().unwrap();
        assert!(s.contains("#SBATCH --array=0-1,3,7%2\n"), "{s}");
        assert!(s.contains("#SBATCH --output=/runs/r/slurm/logs/saescope-harvest-%A_%a.out\n"));
        assert!(s.contains("#SBATCH --partition=gpu\n#SBATCH --gpus-per-task=1\n"));
        assert!(!s.contains("--mem"));
        assert!(s.ends_with(
            "exec '/bin/saescope' '--part' ''\"${SLURM_ARRAY_TASK_ID}\"'/4' 'it'\\''s'\n"
        ));
        let single = job(None).script().unwrap();
        assert!(!single.contains("--array") && single.contains("saescope-harvest-%j.out"));
    }

    #[test]
    fn the_script_runs_the_command_with_the_task_number() {
        let dir = tempfile::tempdir().unwrap();
        let printf = |last: &str| -> Vec<String> {
            vec![
                "printf".into(),
                "%s|".into(),
                "{task}/4".into(),
                last.into(),
            ]
        };
        let run = |j: &Job, task: &str| {
            let path = dir.path().join("job.sbatch");
            j.write(&path).unwrap();
            let out = Command::new("bash")
                .arg(&path)
                .env("SLURM_ARRAY_TASK_ID", task)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let same = Job {
            work: Work::Array {
                tasks: vec![2],
                command: printf("it's $HOME"),
            },
            log_dir: dir.path().join("logs"),
            ..job(None)
        };
        assert_eq!(run(&same, "2"), "2/4|it's $HOME|");
        let each = Job {
            work: Work::PerTask(vec![(0, printf("a")), (5, printf("b"))]),
            ..same
        };
        assert_eq!(run(&each, "5"), "5/4|b|");
        assert_eq!(run(&each, "0"), "0/4|a|");
        assert_eq!(run(&each, "1"), "");
        assert!(each.script().unwrap().contains("#SBATCH --array=0,5%2\n"));
        assert!(job(Some(vec![])).script().is_err());
        assert_eq!(ranges(&[10, 9, 7, 0, 1, 2, 3, 3]), "0-3,7,9-10");
        let spaced = Job {
            workdir: "/home/u/My Project".into(),
            ..job(None)
        };
        let err = spaced.script().unwrap_err().to_string();
        assert!(err.contains("`/home/u/My Project`"), "{err}");
    }
}
