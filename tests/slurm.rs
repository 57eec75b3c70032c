//! `saescope slurm` against a real single-node Slurm cluster (Debian's slurm-wlm, started by
//! `scripts/slurm-cluster` in a temporary directory): a harvest as a job array of parts and a
//! merge that waits for them, dictionaries trained as an array once the merge has succeeded and
//! then analysed as another, dictionaries trained straight from the model (a task per hook),
//! re-submission that runs only what is left, and a cancelled job; then a harvest in parts into
//! an S3-compatible server (moto, from `scripts/s3-server`), merged and trained from there.
//! Fails with the reason when the cluster cannot be started.

mod common;

use saescope_store::{ReadOptions, Run};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The cluster's daemons, stopped (with their process group) when dropped.
struct Cluster {
    child: Child,
    conf: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-cluster");
        let mut child = Command::new(&script)
            .arg(dir.path().join("cluster"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("scripts/slurm-cluster starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let Some(conf) = first.trim().strip_prefix("SLURM_CONF=") else {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the Slurm cluster did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Cluster {
            conf: conf.to_owned(),
            child,
            _dir: dir,
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn saescope(&self, args: &[&str]) -> Output {
        self.command(env!("CARGO_BIN_EXE_saescope"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Waits until no job is pending or running.
    fn wait_idle(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let out = self
                .command("squeue")
                .args(["-h", "-o", "%i %T"])
                .output()
                .unwrap();
            let listed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && listed.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "jobs still queued after {limit:?}: {listed}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The job id printed after `what` (`harvest job 12`).
fn job_id(out: &str, what: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{what} job ")))
        .map(|id| id.trim().to_owned())
}

fn values(run: &Path) -> (Vec<u64>, Vec<f32>) {
    let run = Run::open(run).unwrap();
    let hook = run.manifest().hooks[0].name.clone();
    let (mut idx, mut data) = (vec![], vec![]);
    for b in run.batches(&hook, &ReadOptions::default()).unwrap() {
        let b = b.unwrap();
        idx.extend(b.token_index);
        data.extend(b.data);
    }
    (idx, data)
}

fn submit(cluster: &Cluster, run: &Path, tokens: &str) -> String {
    let o = submit_output(cluster, run, tokens);
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

fn submit_output(cluster: &Cluster, run: &Path, tokens: &str) -> Output {
    cluster.saescope(&[
        "slurm",
        "harvest",
        "--parts",
        "2",
        "--cpus-per-task",
        "1",
        "--submit",
        "--",
        "--out",
        run.to_str().unwrap(),
        "--max-tokens",
        tokens,
        "--shard-mb",
        "1",
    ])
}

/// Trains one dictionary of each of two sizes on the run, after job `after`.
fn train(cluster: &Cluster, run: &Path, after: &str) -> String {
    let o = cluster.saescope(&[
        "slurm",
        "train",
        "--hooks",
        "blocks.6.hook_resid_post",
        "--latents",
        "64,128",
        "--cpus-per-task",
        "1",
        "--after",
        after,
        "--submit",
        "--",
        "--run",
        run.to_str().unwrap(),
        "--k",
        "4",
        "--tokens",
        "2048",
        "--batch-size",
        "256",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

#[test]
fn harvest_training_and_analysis_run_as_job_arrays_and_resume_after_a_cancel() {
    let cluster = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();

    // Two parts and the merge, then two dictionaries trained once the merge has succeeded; the
    // run equals a harvest on this machine.
    let run = tmp.path().join("run");
    let out = submit(&cluster, &run, "3000");
    assert!(job_id(&out, "harvest").is_some(), "{out}");
    let merge = job_id(&out, "merge").unwrap();
    // Submitted again while those jobs are queued or running: refused, naming them.
    let again = submit_output(&cluster, &run, "3000");
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("still queued or running") && text(&again).contains(&merge),
        "{}",
        text(&again)
    );
    let trained = train(&cluster, &run, &merge);
    assert!(trained.contains("2 dictionaries, 2 to train"), "{trained}");
    assert!(job_id(&trained, "train").is_some(), "{trained}");
    cluster.wait_idle(Duration::from_secs(300));
    let logs: Vec<PathBuf> = std::fs::read_dir(run.join("slurm/logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        logs.len(),
        5,
        "two harvest tasks' logs, the merge's and two training tasks': {logs:?}"
    );
    for latents in [64, 128] {
        let dict = saescope_store::DictDir::in_run(
            &run,
            &format!("blocks.6.hook_resid_post-topk-{latents}"),
        );
        assert!(
            dict.weights().exists() && dict.metrics().exists(),
            "{} is not trained; logs: {logs:?}",
            dict.path().display()
        );
        let cfg = std::fs::read_to_string(dict.config()).unwrap();
        assert!(cfg.contains(&format!("\"d_sae\": {latents}")), "{cfg}");
    }
    let again = train(&cluster, &run, &merge);
    assert!(again.contains("nothing to submit"), "{again}");
    // Every dictionary of the run analysed, one task each.
    let analyze = |cluster: &Cluster| {
        let o = cluster.saescope(&[
            "slurm",
            "analyze",
            "--run",
            run.to_str().unwrap(),
            "--cpus-per-task",
            "1",
            "--submit",
            "--",
            "--tokens",
            "1024",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let out = analyze(&cluster);
    assert!(out.contains("2 dictionaries, 2 to analyse"), "{out}");
    cluster.wait_idle(Duration::from_secs(300));
    for dict in saescope_store::DictDir::list(&run) {
        let summary = dict.path().join("features/summary.json");
        assert!(
            summary.is_file(),
            "{} is not analysed",
            dict.path().display()
        );
    }
    assert!(analyze(&cluster).contains("nothing to submit"));

    // Training from the model, one hook per task, each task streaming its own forward passes.
    let streamed = tmp.path().join("streamed");
    let toml = tmp.path().join("train.toml");
    std::fs::write(&toml, "init_tokens = 256\n").unwrap();
    let stream = |cluster: &Cluster| {
        let o = cluster.saescope(&[
            "slurm",
            "train",
            "--hooks",
            "blocks.3.hook_resid_post,blocks.6.hook_resid_post",
            "--latents",
            "64",
            "--cpus-per-task",
            "1",
            "--submit",
            "--",
            "--model",
            saescope_activations::assets::default_model()
                .to_str()
                .unwrap(),
            "--out",
            streamed.to_str().unwrap(),
            "--tokens",
            "512",
            "--batch-size",
            "256",
            "--k",
            "4",
            "--heldout-tokens",
            "256",
            "--config",
            toml.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let out = stream(&cluster);
    assert!(out.contains("2 dictionaries, 2 to train"), "{out}");
    cluster.wait_idle(Duration::from_secs(300));
    for layer in [3, 6] {
        let dict = saescope_store::DictDir::new(
            streamed.join(format!("blocks.{layer}.hook_resid_post-topk-64")),
        );
        assert!(
            dict.weights().exists() && dict.metrics().exists(),
            "{} is not trained",
            dict.path().display()
        );
    }
    assert!(stream(&cluster).contains("nothing to submit"));
    let merged = Run::open(&run).unwrap_or_else(|e| panic!("{e}; logs: {logs:?}"));
    assert_eq!(merged.manifest().total_tokens, 3000);
    assert_eq!(merged.manifest().extra["parts"], 2);
    let whole = tmp.path().join("whole");
    let o = cluster.saescope(&[
        "harvest",
        "--out",
        whole.to_str().unwrap(),
        "--max-tokens",
        "3000",
        "--shard-mb",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (a, b) = (values(&run), values(&whole));
    assert_eq!(a.0, b.0);
    assert!(
        a.1.iter()
            .zip(&b.1)
            .all(|(x, y)| x.to_bits() == y.to_bits())
    );
    // Submitting a complete run again submits nothing.
    let again = submit(&cluster, &run, "3000");
    assert!(again.contains("nothing to submit"), "{again}");
    assert!(job_id(&again, "harvest").is_none(), "{again}");

    // Cancelled once a part has written a shard: nothing is merged, and the re-submitted array
    // continues each part where it stopped.
    let run = tmp.path().join("cancelled");
    let out = submit(&cluster, &run, "20000");
    let array = job_id(&out, "harvest").unwrap();
    let start = Instant::now();
    let has_shard = |i: u32| {
        let dir = saescope_store::parts::part_dir(&run, i, 2);
        saescope_store::Manifest::load(&dir).is_ok_and(|m| !m.shards.is_empty() && !m.complete)
    };
    while !(has_shard(0) || has_shard(1)) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no part wrote a shard"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = cluster.command("scancel").arg(&array).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    cluster.wait_idle(Duration::from_secs(60));
    assert!(
        !run.join("manifest.json").exists(),
        "a cancelled harvest commits nothing"
    );
    let status = saescope_store::parts::status(&run).unwrap();
    let pending = status.pending();
    assert!(!pending.is_empty());
    let started: u64 = status.parts.iter().flatten().map(|m| m.total_tokens).sum();
    assert!(started > 0);

    let out = submit(&cluster, &run, "20000");
    let listed: Vec<String> = pending.iter().map(|p| p.to_string()).collect();
    assert!(
        out.contains(&format!(
            "{} to run (tasks {})",
            pending.len(),
            listed.join("-")
        )),
        "only the parts left run: {out}"
    );
    let resubmitted = job_id(&out, "harvest").unwrap();
    cluster.wait_idle(Duration::from_secs(300));
    let merged = Run::open(&run).unwrap();
    assert_eq!(merged.manifest().total_tokens, 20000);
    for i in 0..merged.manifest().shards.len() {
        merged.check_shard(i, true).unwrap();
    }
    // The resumed tasks wrote only what the cancelled ones had not.
    let prefix = format!("saescope-harvest-{resubmitted}_");
    let logs = std::fs::read_dir(run.join("slurm/logs")).unwrap();
    let written: u64 = logs
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .map(|p| std::fs::read_to_string(p).unwrap())
        .flat_map(|log| {
            log.lines()
                .filter_map(|l| {
                    let (_, rest) = l.split_once(" tokens (")?;
                    rest.split_once(" this run")?.0.parse::<u64>().ok()
                })
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(written + started, 20000, "each token is computed once");

    // Into S3: the parts and the merge as jobs writing to the bucket (the jobs inherit the
    // credentials from the submitting shell), then a dictionary trained from the run there
    // into the run there. Scripts and logs go in the working directory, not in the bucket.
    common::s3::server();
    let url = format!("s3://{}/slurm-run", common::s3::BUCKET);
    let in_tmp = |args: &[&str]| {
        let o = cluster
            .command(env!("CARGO_BIN_EXE_saescope"))
            .args(args)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let out = in_tmp(&[
        "slurm",
        "harvest",
        "--parts",
        "2",
        "--cpus-per-task",
        "1",
        "--submit",
        "--",
        "--out",
        &url,
        "--max-tokens",
        "3000",
        "--shard-mb",
        "1",
    ]);
    let merge = job_id(&out, "merge").unwrap();
    let dicts = format!("{url}/dictionaries/blocks.6.hook_resid_post-topk-64");
    let trained = in_tmp(&[
        "slurm",
        "train",
        "--hooks",
        "blocks.6.hook_resid_post",
        "--latents",
        "64",
        "--cpus-per-task",
        "1",
        "--after",
        &merge,
        "--submit",
        "--",
        "--run",
        &url,
        "--k",
        "4",
        "--tokens",
        "2048",
        "--batch-size",
        "256",
    ]);
    assert!(trained.contains("1 dictionaries, 1 to train"), "{trained}");
    cluster.wait_idle(Duration::from_secs(300));
    let logs = tmp
        .path()
        .join("saescope-slurm/s3")
        .join(common::s3::BUCKET)
        .join("slurm-run/logs");
    let (a, b) = (values(Path::new(&url)), values(&whole));
    assert_eq!(a.0, b.0, "logs in {}", logs.display());
    assert!(
        a.1.iter()
            .zip(&b.1)
            .all(|(x, y)| x.to_bits() == y.to_bits())
    );
    let dict = saescope_store::remote::Remote::open(Path::new(&dicts)).unwrap();
    assert!(
        dict.size("sae_weights.safetensors").unwrap().is_some(),
        "no dictionary in {dicts}; logs in {}",
        logs.display()
    );
    assert!(std::fs::read_dir(&logs).unwrap().count() >= 4);
    let again = in_tmp(&[
        "slurm",
        "train",
        "--hooks",
        "blocks.6.hook_resid_post",
        "--latents",
        "64",
        "--submit",
        "--",
        "--run",
        &url,
    ]);
    assert!(again.contains("nothing to submit"), "{again}");
}
