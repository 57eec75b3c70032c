//! Runs on object storage, against a real S3-compatible server (moto, started by
//! `scripts/s3-server` on 127.0.0.1): a harvest into S3 reads back as the same run harvested on
//! disk and trains the same dictionary; a harvest in two parts merges there; a killed harvest
//! leaves only committed shards and resumes; DuckDB reads the run where it lives; a second writer,
//! a missing bucket and missing credentials are refused clearly.
//! Fails with the reason when the server cannot be started.

mod common;

use common::s3::{BUCKET, READ_ONLY_BUCKET, read_only_server, server};
use saescope_store::{ReadOptions, Run, RunWriter, Shuffle, WriterOptions, synthetic};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const HOOK: &str = "blocks.6.hook_resid_post";

fn s3(path: &str) -> String {
    format!("s3://{BUCKET}/{path}")
}

fn saescope(args: &[&str]) -> Output {
    saescope_command(args).output().unwrap()
}

fn saescope_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_saescope"));
    c.args(args).envs(server().env());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

fn harvest(out: &str, tokens: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "harvest",
        "--out",
        out,
        "--max-tokens",
        tokens,
        "--shard-mb",
        "1",
    ];
    args.extend(extra);
    saescope(&args)
}

/// Every (token index, value) of the run's first hook, in the order `opts` reads them.
fn values(run: &Run, opts: &ReadOptions) -> (Vec<u64>, Vec<f32>) {
    let hook = run.manifest().hooks[0].name.clone();
    let (mut idx, mut data) = (vec![], vec![]);
    for b in run.batches(&hook, opts).unwrap() {
        let b = b.unwrap();
        idx.extend(b.token_index);
        data.extend(b.data);
    }
    (idx, data)
}

/// The rows ordered by token index.
fn sorted((idx, data): (Vec<u64>, Vec<f32>), dim: usize) -> (Vec<u64>, Vec<f32>) {
    let mut order: Vec<usize> = (0..idx.len()).collect();
    order.sort_by_key(|&i| idx[i]);
    let values = order
        .iter()
        .flat_map(|&i| data[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    (order.iter().map(|&i| idx[i]).collect(), values)
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The run on disk and the run in S3 read alike, in order and shuffled (which reads row groups
/// from across the shards with ranged requests, several in flight).
fn assert_same_run(local: &Path, remote: &str) {
    let (a, b) = (Run::open(local).unwrap(), Run::open(remote).unwrap());
    assert!(b.is_remote() && !a.is_remote());
    assert_eq!(a.manifest().total_tokens, b.manifest().total_tokens);
    for opts in [
        ReadOptions::default(),
        ReadOptions {
            batch_tokens: 100,
            shuffle: Some(Shuffle {
                seed: 7,
                buffer_tokens: 500,
            }),
            ..ReadOptions::default()
        },
        // Row groups fetched by byte range rather than whole files downloaded.
        ReadOptions {
            batch_tokens: 100,
            shuffle: Some(Shuffle {
                seed: 7,
                buffer_tokens: 500,
            }),
            remote_cache_bytes: 0,
            ..ReadOptions::default()
        },
        ReadOptions {
            remote_cache_bytes: 0,
            ..ReadOptions::default()
        },
    ] {
        let (mut x, mut y) = (values(&a, &opts), values(&b, &opts));
        if a.manifest().shards.len() != b.manifest().shards.len() {
            // Row groups cut elsewhere shuffle differently: compare the shuffled rows as a set.
            let dim = a.manifest().hooks[0].dim();
            x = sorted(x, dim);
            y = sorted(y, dim);
        }
        assert_eq!(x.0, y.0);
        assert!(same_bits(&x.1, &y.1));
    }
    // The token tables too (a run in parts cuts its shards elsewhere).
    let tokens = |r: &Run| -> Vec<_> {
        (0..r.manifest().shards.len())
            .flat_map(|i| r.read_tokens(i).unwrap())
            .collect()
    };
    assert_eq!(tokens(&a), tokens(&b));
    for i in 0..b.manifest().shards.len() {
        b.check_shard(i, true).unwrap();
    }
}

#[test]
fn a_harvest_into_s3_reads_and_trains_as_the_same_harvest_on_disk() {
    server();
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("run");
    let remote = s3("whole");
    ok(harvest(local.to_str().unwrap(), "3000", &[]));
    let out = ok(harvest(&remote, "3000", &[]));
    assert!(out.contains(&remote), "{out}");
    assert_same_run(&local, &remote);
    let a = Run::open(&local).unwrap();
    assert!(a.manifest().shards.len() >= 2, "{:?}", a.manifest().shards);

    // A dictionary trained from the run in S3 equals one trained from the run on disk.
    let train = |run: &str, out: &Path| {
        ok(saescope(&[
            "train",
            "--run",
            run,
            "--hook",
            HOOK,
            "--latents",
            "64",
            "--k",
            "4",
            "--tokens",
            "2048",
            "--batch-size",
            "256",
            "--out",
            out.to_str().unwrap(),
        ]))
    };
    let (d1, d2) = (tmp.path().join("from-disk"), tmp.path().join("from-s3"));
    train(local.to_str().unwrap(), &d1);
    train(&remote, &d2);
    let weights = |d: &Path| std::fs::read(d.join("sae_weights.safetensors")).unwrap();
    assert!(weights(&d1) == weights(&d2), "the weights differ");
    // Written to S3 (trained in a local copy, then uploaded): the same weights, in the bucket.
    let url = s3("dicts/topk-64");
    train(&remote, Path::new(&url));
    let dict = saescope_store::remote::Remote::open(Path::new(&url)).unwrap();
    let uploaded = dict
        .get("sae_weights.safetensors")
        .unwrap()
        .expect("uploaded");
    assert!(uploaded.as_ref() == weights(&d1).as_slice());
    assert!(dict.get("cfg.json").unwrap().is_some());
    // Its feature store, built from the run in S3 that its cfg.json names, goes beside it.
    let out = ok(saescope(&["analyze", "--dict", &url, "--tokens", "1024"]));
    assert!(out.contains("analysed 64 features"), "{out}");
    let summary = dict
        .get("features/summary.json")
        .unwrap()
        .expect("uploaded");
    let summary: serde_json::Value = serde_json::from_slice(&summary).unwrap();
    assert_eq!(summary["tokens"], 1024, "{summary}");
    // Trained straight from the model into the bucket.
    let streamed = s3("streamed");
    let toml = tmp.path().join("train.toml");
    std::fs::write(&toml, "init_tokens = 256\n").unwrap();
    ok(saescope(&[
        "train",
        "--config",
        toml.to_str().unwrap(),
        "--model",
        saescope_activations::assets::default_model()
            .to_str()
            .unwrap(),
        "--hook",
        HOOK,
        "--latents",
        "32",
        "--k",
        "4",
        "--tokens",
        "512",
        "--batch-size",
        "256",
        "--heldout-tokens",
        "256",
        "--out",
        &streamed,
    ]));
    let dict = saescope_store::remote::Remote::open(Path::new(&streamed)).unwrap();
    let listed: Vec<String> = dict.list("").unwrap().into_iter().map(|(p, _)| p).collect();
    assert!(
        listed.contains(&format!("{HOOK}-topk-32/sae_weights.safetensors")),
        "{listed:?}"
    );

    // Writing over it is refused; nothing changes.
    let again = harvest(&remote, "3000", &[]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already holds a run"),
        "{}",
        text(&again)
    );
    assert_same_run(&local, &remote);

    // DuckDB reads the run where it lives, through its httpfs extension.
    let tokens: u64 = a.manifest().total_tokens;
    let ids: u64 = (0..a.manifest().shards.len())
        .flat_map(|i| a.read_tokens(i).unwrap())
        .map(|t| u64::from(t.token_id))
        .sum();
    let python = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server"))
        .arg("--python")
        .output()
        .unwrap();
    let python = String::from_utf8(python.stdout).unwrap();
    let query =
        format!("SELECT count(*), sum(token_id) FROM read_parquet('{remote}/tokens/*.parquet')");
    let got = Command::new(python.trim())
        .args(["-c", DUCKDB, &server().url, &query])
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", text(&got));
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        format!("{tokens} {ids}")
    );
}

/// DuckDB with the pinned httpfs extension, pointed at the server (argv: endpoint, query).
const DUCKDB: &str = r#"
import os, sys, duckdb, duckdb_extension_httpfs as h
ext = os.path.join(os.path.dirname(h.__file__), "extensions", "v" + duckdb.__version__, "httpfs.duckdb_extension")
c = duckdb.connect()
c.execute(f"LOAD '{ext}'")
host = sys.argv[1].removeprefix("http://")
c.execute(f"CREATE SECRET (TYPE s3, KEY_ID 'test', SECRET 'test', REGION 'us-east-1', ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)")
print(*c.execute(sys.argv[2]).fetchone())
"#;

#[test]
fn a_harvest_in_two_parts_merges_in_s3_and_a_killed_harvest_resumes() {
    server();
    let tmp = tempfile::tempdir().unwrap();
    let remote = s3("parts");
    let local = tmp.path().join("whole");
    ok(harvest(local.to_str().unwrap(), "3000", &[]));
    let out = ok(harvest(&remote, "3000", &["--part", "0/2"]));
    assert!(out.contains("waiting for part 1"), "{out}");
    // Merging before part 1 exists: refused, naming it; nothing is committed.
    let early = saescope(&["store", "merge", &remote]);
    assert!(!early.status.success());
    assert!(text(&early).contains("part 1 of 2"), "{}", text(&early));
    let err = Run::open(&remote).unwrap_err().to_string();
    assert!(err.contains("not yet merged"), "{err}");
    // The last part to finish merges.
    ok(harvest(&remote, "3000", &["--part", "1/2"]));
    assert_same_run(&local, &remote);
    assert_eq!(Run::open(&remote).unwrap().manifest().extra["parts"], 2);
    // Merging again is a no-op.
    ok(saescope(&["store", "merge", &remote]));

    // Killed once it has committed a shard: the manifest lists complete shards only, each
    // readable; the resumed harvest completes it, equal to one harvested in one go.
    let remote = s3("killed");
    let mut child = saescope_command(&[
        "harvest",
        "--out",
        &remote,
        "--max-tokens",
        "6000",
        "--shard-mb",
        "1",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let start = Instant::now();
    loop {
        let shards = Run::open_part(&remote).map_or(0, |r| r.manifest().shards.len());
        if shards >= 1 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the harvest ended early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no shard after 2 min"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Run::open_part(&remote).unwrap();
    assert!(!killed.manifest().complete);
    for i in 0..killed.manifest().shards.len() {
        killed.check_shard(i, true).unwrap();
    }
    ok(harvest(&remote, "6000", &["--resume"]));
    let whole = tmp.path().join("whole-6000");
    ok(harvest(whole.to_str().unwrap(), "6000", &[]));
    assert_same_run(&whole, &remote);
}

#[test]
fn a_second_writer_a_missing_bucket_and_missing_credentials_are_refused() {
    server();
    // Two writers of one run: the one whose manifest is no longer the latest is stopped.
    let url = PathBuf::from(s3("two-writers"));
    let spec = synthetic::spec(
        vec![synthetic::hook("h", &[8], saescope_store::Dtype::F32)],
        16,
    );
    let opts = WriterOptions {
        shard_bytes: 8 * 4 * 64,
        row_group_bytes: 8 * 4 * 16,
        ..WriterOptions::default()
    };
    let mut first = RunWriter::create(&url, spec, &opts).unwrap();
    let mut second = RunWriter::resume(&url).unwrap();
    synthetic::append_until(&mut first, 64, 16, |_| {}).unwrap();
    assert_eq!(Run::open_part(&url).unwrap().manifest().shards.len(), 1);
    let err = synthetic::append_until(&mut second, 64, 16, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("another process changed it"), "{err}");
    let err = RunWriter::create(&url, synthetic::spec(vec![], 16), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("already holds a run"), "{err}");
    synthetic::append_until(&mut first, 100, 16, |_| {}).unwrap();
    let m = first.finish().unwrap();
    assert_eq!(m.total_tokens, 100);
    let run = Run::open(&url).unwrap();
    let (idx, data) = values(&run, &ReadOptions::default());
    assert_eq!(idx, (0..100).collect::<Vec<u64>>());
    let mut expected = Vec::new();
    synthetic::fill(0, 100, 0, 8, &mut expected);
    assert!(same_bits(&data, &expected));

    // A dictionary's local copy: a rewrite of the same size is sent again (checkpoints keep
    // their size), and a file another machine put in the bucket meanwhile is left there.
    let url = PathBuf::from(s3("mirrored"));
    let mirror = saescope_store::mirror::Mirror::open(&url).unwrap();
    let file = mirror.local().join("checkpoint.safetensors");
    std::fs::write(&file, b"step 100").unwrap();
    assert_eq!(mirror.push(None).unwrap(), 1);
    let remote = saescope_store::remote::Remote::open(&url).unwrap();
    let theirs = saescope_store::remote::Commit::Overwrite;
    remote
        .put("features/summary.json", b"{}".to_vec(), theirs)
        .unwrap();
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(&file, b"step 200").unwrap();
    assert_eq!(mirror.push(None).unwrap(), 1);
    let got = remote.get("checkpoint.safetensors").unwrap().unwrap();
    assert_eq!(got.as_ref(), b"step 200");
    std::fs::remove_file(&file).unwrap();
    mirror.push(None).unwrap();
    assert!(remote.get("checkpoint.safetensors").unwrap().is_none());
    assert!(remote.get("features/summary.json").unwrap().is_some());
    drop(mirror);
    let again = saescope_store::mirror::Mirror::open(&url).unwrap();
    assert!(again.local().join("features/summary.json").is_file());

    // A bucket that does not exist: said so, before any work.
    let o = harvest("s3://no-such-bucket/run", "1000", &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("the bucket `no-such-bucket` does not exist"),
        "{}",
        text(&o)
    );

    // A bucket that refuses writes: the harvest stops before any work, and nothing is there.
    let ro = read_only_server();
    let target = format!("s3://{READ_ONLY_BUCKET}/run");
    let o = saescope_command(&["harvest", "--out", &target, "--max-tokens", "1000"])
        .envs(ro.env())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("permission denied"), "{}", text(&o));
    assert!(!text(&o).contains(&ro.key.1), "a secret was printed");
    let o = saescope_command(&["store", "inspect", &target])
        .envs(ro.env())
        .output()
        .unwrap();
    assert!(text(&o).contains("not a saescope run"), "{}", text(&o));

    // No credentials: the variable is named, and no value is printed.
    let home = tempfile::tempdir().unwrap();
    let o = saescope_command(&["harvest", "--out", &s3("nocreds"), "--max-tokens", "100"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("AWS_ACCESS_KEY_ID"), "{}", text(&o));
    let o = saescope_command(&["store", "inspect", &s3("whole-not-there")])
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("AWS_SECRET_ACCESS_KEY is not"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("=test"), "{}", text(&o));
    assert!(Run::open(s3("nocreds")).is_err());
}
