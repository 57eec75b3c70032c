//! A writer that dies mid-run leaves a readable run, and resuming it yields the same files as an
//! uninterrupted run.

mod common;
use common::*;
use saescope_store::{Dtype, Manifest, ReadOptions, RunWriter, StoreError, synthetic};
use std::path::Path;
use std::time::{Duration, Instant};

const TOTAL: u64 = 4321;

fn reference(dir: &Path) -> Manifest {
    write_run(dir, TOTAL, Dtype::F16)
}

fn assert_same_files(a: &Manifest, b: &Manifest) {
    assert_eq!(a.shards.len(), b.shards.len());
    for (x, y) in a.shards.iter().zip(&b.shards) {
        assert_eq!(x.rows, y.rows);
        assert_eq!(
            x.activations.sha256, y.activations.sha256,
            "shard {} activations differ",
            x.index
        );
        assert_eq!(
            x.tokens.sha256, y.tokens.sha256,
            "shard {} tokens differ",
            x.index
        );
    }
    assert_eq!(a.total_tokens, b.total_tokens);
}

#[test]
fn resume_after_a_dropped_writer_reproduces_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(&tmp.path().join("ref"));

    let dir = tmp.path().join("run");
    let mut w =
        RunWriter::create(&dir, synthetic::spec(hooks(Dtype::F16), 64), &small_opts()).unwrap();
    synthetic::append_until(&mut w, 2600, 333, |_| {}).unwrap();
    drop(w); // dies mid-shard: shard 2 is half written under a temporary name

    // The interrupted run is readable: two complete shards, not marked complete.
    let run = open(&dir);
    assert!(!run.manifest().complete);
    assert_eq!(run.manifest().total_tokens, 2000);
    let n: usize = run
        .batches(RESID, &ReadOptions::default())
        .unwrap()
        .map(|b| b.unwrap().rows())
        .sum();
    assert_eq!(n, 2000);
    assert!(dir.join("activations/part-00002.parquet.tmp").exists());

    let mut w = RunWriter::resume(&dir).unwrap();
    assert_eq!(w.tokens_written(), 2000);
    assert!(
        !dir.join("activations/part-00002.parquet.tmp").exists(),
        "partial shard removed"
    );
    synthetic::append_until(&mut w, TOTAL, 333, |_| {}).unwrap();
    let got = w.finish().unwrap();
    assert_same_files(&want, &got);
}

#[test]
fn files_renamed_but_not_yet_recorded_are_rewritten_on_resume() {
    // A kill between renaming a shard's files and rewriting the manifest leaves final-named
    // files that the manifest does not list. Simulate it by rolling the manifest back a shard.
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(&tmp.path().join("ref"));
    let dir = tmp.path().join("run");
    let mut w =
        RunWriter::create(&dir, synthetic::spec(hooks(Dtype::F16), 64), &small_opts()).unwrap();
    synthetic::append_until(&mut w, 3000, 333, |_| {}).unwrap();
    drop(w);
    edit_manifest(&dir, |m| {
        m["shards"].as_array_mut().unwrap().pop();
        m["total_tokens"] = 2000.into();
    });
    let mut w = RunWriter::resume(&dir).unwrap();
    assert_eq!(w.tokens_written(), 2000);
    synthetic::append_until(&mut w, TOTAL, 500, |_| {}).unwrap();
    assert_same_files(&want, &w.finish().unwrap());
}

#[test]
fn resume_refuses_a_complete_run_and_create_refuses_an_existing_one() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 100, Dtype::F32);
    assert!(matches!(
        RunWriter::resume(tmp.path()),
        Err(StoreError::AlreadyComplete { .. })
    ));
    let again = RunWriter::create(
        tmp.path(),
        synthetic::spec(hooks(Dtype::F32), 64),
        &small_opts(),
    );
    assert!(matches!(again, Err(StoreError::AlreadyExists { .. })));
}

/// Not a test on its own: the body of the child process that `killed_writer_process_...` kills.
#[test]
fn child_writer_process() {
    let Some(dir) = std::env::var_os("SAESCOPE_TEST_CHILD_RUN") else {
        return;
    };
    let dir = Path::new(&dir);
    let mut w =
        RunWriter::create(dir, synthetic::spec(hooks(Dtype::F16), 64), &small_opts()).unwrap();
    // Slow enough that the parent kills it mid-run; it would take ~40 s to finish.
    synthetic::append_until(&mut w, TOTAL, 100, |_| {
        std::thread::sleep(Duration::from_millis(100))
    })
    .unwrap();
    w.finish().unwrap();
}

#[test]
fn killed_writer_process_leaves_a_run_that_resumes_to_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(&tmp.path().join("ref"));
    let dir = tmp.path().join("run");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SAESCOPE_TEST_CHILD_RUN", &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until two shards are committed, then SIGKILL it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(m) = Manifest::load(&dir)
            && m.shards.len() >= 2
        {
            break;
        }
        assert!(Instant::now() < deadline, "child wrote no shards in time");
        assert!(
            child.try_wait().unwrap().is_none(),
            "child exited before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let m = Manifest::load(&dir).unwrap();
    assert!(!m.complete);
    assert!(m.total_tokens >= 2000 && m.total_tokens < TOTAL);
    let run = open(&dir);
    for i in 0..m.shards.len() {
        run.check_shard(i, true).unwrap();
    }
    let mut w = RunWriter::resume(&dir).unwrap();
    synthetic::append_until(&mut w, TOTAL, 333, |_| {}).unwrap();
    assert_same_files(&want, &w.finish().unwrap());
}
