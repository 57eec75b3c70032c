//! Every way a run can be damaged gives an error that names the file, and never a panic.

mod common;
use common::*;
use proptest::prelude::*;
use saescope_store::{Dtype, Manifest, ReadOptions, Run, StoreError, sha256_file};
use std::path::{Path, PathBuf};

fn shard_file(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("activations/part-{shard:05}.parquet"))
}

/// Reads everything, returning the first error.
fn read_everything(dir: &Path, verify: bool) -> Result<usize, StoreError> {
    let run = Run::open(dir)?;
    let opts = ReadOptions {
        verify_checksums: verify,
        ..ReadOptions::default()
    };
    let mut n = 0;
    for hook in [RESID, Z] {
        for b in run.batches(hook, &opts)? {
            n += b?.rows();
        }
    }
    Ok(n)
}

/// Makes the manifest agree with the file as it now is, so that only deeper checks can catch it.
fn rebless(dir: &Path, shard: usize) {
    let path = shard_file(dir, shard);
    let bytes = std::fs::metadata(&path).unwrap().len();
    let sha = sha256_file(&path).unwrap();
    edit_manifest(dir, |m| {
        m["shards"][shard]["activations"]["bytes"] = bytes.into();
        m["shards"][shard]["activations"]["sha256"] = sha.into();
    });
}

fn assert_names(err: &StoreError, needle: &str) {
    let msg = err.to_string();
    assert!(
        msg.contains(needle),
        "error `{msg}` does not name `{needle}`"
    );
}

#[test]
fn missing_shard_is_reported_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 2500, Dtype::F32);
    std::fs::remove_file(shard_file(tmp.path(), 1)).unwrap();
    let err = read_everything(tmp.path(), false).unwrap_err();
    assert!(
        matches!(err, StoreError::MissingFile { shard: 1, .. }),
        "{err}"
    );
    assert_names(&err, "activations/part-00001.parquet");
    // Shard 0 is still fine on its own.
    let run = Run::open(tmp.path()).unwrap();
    run.check_shard(0, true).unwrap();
    assert!(run.check_shard(1, false).is_err());
}

#[test]
fn truncated_shard_is_caught_by_size_and_by_footer() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 2500, Dtype::F32);
    let path = shard_file(tmp.path(), 2);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let err = read_everything(tmp.path(), false).unwrap_err();
    assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err}");
    assert_names(&err, "part-00002.parquet");

    // Even when the manifest is made to agree, the broken footer is an error, not a panic.
    rebless(tmp.path(), 2);
    let err = read_everything(tmp.path(), true).unwrap_err();
    assert!(matches!(err, StoreError::Parquet { .. }), "{err}");
    assert_names(&err, "part-00002.parquet");
}

#[test]
fn corrupted_bytes_fail_the_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 2500, Dtype::F32);
    let path = shard_file(tmp.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40; // a flipped bit in the middle of the float data
    std::fs::write(&path, &bytes).unwrap();
    let err = read_everything(tmp.path(), true).unwrap_err();
    assert!(matches!(err, StoreError::Checksum { .. }), "{err}");
    assert_names(&err, "part-00000.parquet");
    let err = Run::open(tmp.path())
        .unwrap()
        .check_shard(0, true)
        .unwrap_err();
    assert!(matches!(err, StoreError::Checksum { .. }));
}

#[test]
fn wrong_checksum_in_the_manifest_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 1500, Dtype::F32);
    edit_manifest(tmp.path(), |m| {
        m["shards"][1]["activations"]["sha256"] = "00".repeat(32).into();
    });
    let err = read_everything(tmp.path(), true).unwrap_err();
    assert!(matches!(err, StoreError::Checksum { .. }), "{err}");
    assert_names(&err, "part-00001.parquet");
}

#[test]
fn shard_whose_schema_disagrees_with_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 1500, Dtype::F32);
    // The manifest says the residual hook has 25 values, the files hold 24.
    edit_manifest(tmp.path(), |m| {
        m["hooks"][0]["shape"] = serde_json::json!([25]);
    });
    let err = read_everything(tmp.path(), false).unwrap_err();
    assert!(matches!(err, StoreError::Schema { .. }), "{err}");
    assert_names(&err, "part-00000.parquet");
    assert_names(&err, "blocks.0.hook_resid_post");

    // A shard from another run (other hook names) swapped in, manifest checksums made to agree.
    let other = tempfile::tempdir().unwrap();
    let mut w = saescope_store::RunWriter::create(
        other.path(),
        saescope_store::synthetic::spec(
            vec![
                saescope_store::synthetic::hook("blocks.9.hook_mlp_out", &[24], Dtype::F32),
                saescope_store::synthetic::hook(Z, &[3, 4], Dtype::F32),
            ],
            64,
        ),
        &small_opts(),
    )
    .unwrap();
    saescope_store::synthetic::append_until(&mut w, 1000, 500, |_| {}).unwrap();
    w.finish().unwrap();
    let tmp2 = tempfile::tempdir().unwrap();
    write_run(tmp2.path(), 1500, Dtype::F32);
    std::fs::copy(shard_file(other.path(), 0), shard_file(tmp2.path(), 0)).unwrap();
    rebless(tmp2.path(), 0);
    let err = read_everything(tmp2.path(), true).unwrap_err();
    assert!(matches!(err, StoreError::Schema { .. }), "{err}");
    assert_names(&err, "column `blocks.0.hook_resid_post` is missing");
}

#[test]
fn row_count_disagreeing_with_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 1500, Dtype::F32);
    // f32 z: 144 bytes a row, so 833 rows a shard. Move 100 rows from shard 1 to shard 0.
    edit_manifest(tmp.path(), |m| {
        m["shards"][0]["rows"] = 933.into();
        m["shards"][1]["rows"] = 567.into();
        m["shards"][1]["first_token"] = 933.into();
    });
    let err = read_everything(tmp.path(), false).unwrap_err();
    assert!(matches!(err, StoreError::Schema { .. }), "{err}");
    assert_names(&err, "part-00000.parquet");
    assert_names(&err, "833 rows, but the manifest says 933");
}

#[test]
fn unknown_hook_lists_the_ones_that_exist() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 100, Dtype::F32);
    let run = Run::open(tmp.path()).unwrap();
    let err = run
        .batches("blocks.3.hook_resid_post", &ReadOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::UnknownHook { .. }));
    assert_names(&err, "blocks.3.hook_resid_post");
    assert_names(&err, "blocks.0.hook_resid_post, blocks.0.attn.hook_z");
}

#[test]
fn broken_manifests_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 1500, Dtype::F32);
    let original = std::fs::read(tmp.path().join("manifest.json")).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|m| {
                m.as_object_mut().unwrap().remove("hooks");
            }),
            "hooks",
        ),
        (
            Box::new(|m| m["hooks"][1]["dtype"] = "f64".into()),
            "hooks[1].dtype",
        ),
        (
            Box::new(|m| m["shards"][1]["first_token"] = 7.into()),
            "shards[1].first_token",
        ),
        (Box::new(|m| m["total_tokens"] = 99.into()), "total_tokens"),
        (
            Box::new(|m| m["shards"][0]["tokens"]["path"] = "../../etc/passwd".into()),
            "shards[0].tokens.path",
        ),
        (
            Box::new(|m| m["hooks"][1]["name"] = RESID.into()),
            "hooks[1].name",
        ),
        (
            Box::new(|m| m["format"] = "something.else".into()),
            "format",
        ),
    ];
    for (edit, field) in cases {
        std::fs::write(tmp.path().join("manifest.json"), &original).unwrap();
        edit_manifest(tmp.path(), edit);
        match Manifest::load(tmp.path()) {
            Err(StoreError::Manifest { field: f, path, .. }) => {
                assert_eq!(f, field);
                assert!(path.ends_with("manifest.json"));
            }
            other => panic!("expected a manifest error at {field}, got {other:?}"),
        }
    }
    std::fs::write(tmp.path().join("manifest.json"), &original).unwrap();
    edit_manifest(tmp.path(), |m| m["format_version"] = 2.into());
    assert!(matches!(
        Manifest::load(tmp.path()),
        Err(StoreError::UnsupportedVersion { found: 2, .. })
    ));
    std::fs::write(tmp.path().join("manifest.json"), b"{ not json").unwrap();
    assert!(matches!(
        Manifest::load(tmp.path()),
        Err(StoreError::Manifest { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Run::open(empty.path()),
        Err(StoreError::NotARun { .. })
    ));
}

#[test]
fn writer_rejects_mismatched_batches_and_keeps_the_run_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = saescope_store::RunWriter::create(
        tmp.path(),
        saescope_store::synthetic::spec(hooks(Dtype::F32), 64),
        &small_opts(),
    )
    .unwrap();
    saescope_store::synthetic::append_until(&mut w, 1200, 400, |_| {}).unwrap();
    let tok = [saescope_store::synthetic::token(1200, 64, 100)];
    let err = w.append(&tok, &[&[0.0; 24], &[0.0; 11]]).unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)));
    assert!(err.to_string().contains("blocks.0.attn.hook_z"));
    assert!(w.append(&tok, &[&[0.0; 24]]).is_err());
    let m = w.finish().unwrap();
    assert_eq!(m.total_tokens, 1200);
    assert_eq!(read_everything(tmp.path(), true).unwrap(), 2400);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    /// Random damage anywhere in a shard (header, pages, footer), with the manifest made to agree
    /// so that the decoder itself meets the damage: reading returns data or an error, never panics.
    #[test]
    fn random_damage_never_panics(flips in prop::collection::vec((0.0f64..1.0, any::<u8>()), 1..6), cut in prop::option::of(0.0f64..1.0)) {
        let tmp = tempfile::tempdir().unwrap();
        write_run(tmp.path(), 600, Dtype::F16);
        let path = shard_file(tmp.path(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, v) in flips {
            let i = ((bytes.len() - 1) as f64 * at) as usize;
            bytes[i] ^= v | 1;
        }
        if let Some(c) = cut {
            bytes.truncate(((bytes.len() as f64) * c) as usize);
        }
        std::fs::write(&path, &bytes).unwrap();
        rebless(tmp.path(), 0);
        let outcome = std::panic::catch_unwind(|| read_everything(tmp.path(), true));
        prop_assert!(outcome.is_ok(), "reading a damaged shard panicked");
        if let Ok(Err(e)) = outcome {
            prop_assert!(e.to_string().contains("part-00000.parquet"), "error does not name the file: {e}");
        }
    }
}
