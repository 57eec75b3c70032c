//! Values written are the values read, exactly, in every storage dtype, order and split.

mod common;
use common::*;
use saescope_store::{Dtype, ReadOptions, Shuffle, synthetic};

fn read_all(run: &saescope_store::Run, hook: &str, opts: &ReadOptions) -> (Vec<u64>, Vec<f32>) {
    let mut idx = Vec::new();
    let mut data = Vec::new();
    for b in run.batches(hook, opts).unwrap() {
        let b = b.unwrap();
        assert_eq!(b.data.len(), b.rows() * b.dim);
        idx.extend_from_slice(&b.token_index);
        data.extend_from_slice(&b.data);
    }
    (idx, data)
}

#[test]
fn sequential_read_returns_exactly_what_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_run(tmp.path(), 4321, Dtype::F16);
    assert!(m.complete);
    assert_eq!(m.total_tokens, 4321);
    assert_eq!(m.layout.rows_per_shard, 1000);
    assert_eq!(m.layout.rows_per_row_group, 250);
    assert_eq!(m.shards.len(), 5);
    assert_eq!(
        m.shards.iter().map(|s| s.rows).collect::<Vec<_>>(),
        [1000, 1000, 1000, 1000, 321]
    );

    let run = open(tmp.path());
    let opts = ReadOptions {
        batch_tokens: 300,
        ..ReadOptions::default()
    };
    let (idx, data) = read_all(&run, RESID, &opts);
    assert_eq!(idx, (0..4321).collect::<Vec<u64>>());
    let mut want = Vec::new();
    synthetic::fill(0, 4321, 0, 24, &mut want);
    assert_eq!(data, want, "f32 values must round-trip bit for bit");

    // The per-head z hook is stored as f16: values come back rounded to f16, and only that.
    let (idx, data) = read_all(&run, Z, &opts);
    assert_eq!(idx.len(), 4321);
    for (r, &t) in idx.iter().enumerate() {
        for j in 0..12 {
            let want = half::f16::from_f32(synthetic::value(t, 1, j)).to_f32();
            assert_eq!(data[r * 12 + j], want, "token {t} component {j}");
        }
    }
}

#[test]
fn batches_have_the_requested_size_except_the_last() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 2500, Dtype::F32);
    let run = open(tmp.path());
    let sizes: Vec<usize> = run
        .batches(
            RESID,
            &ReadOptions {
                batch_tokens: 1024,
                ..ReadOptions::default()
            },
        )
        .unwrap()
        .map(|b| b.unwrap().rows())
        .collect();
    assert_eq!(sizes, [1024, 1024, 452]);
}

#[test]
fn bf16_storage_rounds_to_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 700, Dtype::Bf16);
    let run = open(tmp.path());
    let (idx, data) = read_all(&run, Z, &ReadOptions::default());
    for (r, &t) in idx.iter().enumerate() {
        for j in 0..12 {
            let exact = synthetic::value(t, 1, j);
            let want = half::bf16::from_f32(exact).to_f32();
            assert_eq!(data[r * 12 + j], want);
            assert!((data[r * 12 + j] - exact).abs() <= exact.abs() / 128.0);
        }
    }
}

#[test]
fn token_table_maps_rows_back_to_their_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_run(tmp.path(), 2100, Dtype::F32);
    let run = open(tmp.path());
    let mut t = 0u64;
    for (i, s) in m.shards.iter().enumerate() {
        let rows = run.read_tokens(i).unwrap();
        assert_eq!(rows.len() as u64, s.rows);
        for r in rows {
            assert_eq!(r, synthetic::token(t, 64, 49_152));
            t += 1;
        }
    }
    assert_eq!(t, 2100);
    // BOS positions belong to no document.
    let first = run.read_tokens(0).unwrap();
    assert_eq!(first[0].doc_id, None);
    assert_eq!(first[1].doc_id, Some(0));
    assert_eq!(first[64].context_id, 1);
}

#[test]
fn shuffled_read_is_a_seeded_permutation() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 3000, Dtype::F32);
    let run = open(tmp.path());
    let shuffled = |seed| ReadOptions {
        batch_tokens: 256,
        shuffle: Some(Shuffle {
            seed,
            buffer_tokens: 500,
        }),
        ..ReadOptions::default()
    };
    let (a, data) = read_all(&run, RESID, &shuffled(1));
    let (b, _) = read_all(&run, RESID, &shuffled(1));
    let (c, _) = read_all(&run, RESID, &shuffled(2));
    assert_eq!(a, b, "the same seed must give the same order");
    assert_ne!(a, c, "another seed must give another order");
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..3000).collect::<Vec<u64>>(),
        "every token exactly once"
    );
    // Rows travel with their index.
    for (r, &t) in a.iter().enumerate() {
        assert_eq!(data[r * 24], synthetic::value(t, 0, 0));
    }
    // Mixed across shards: the first 256 tokens read come from more than one shard, and
    // are far from sequential order.
    let shards: std::collections::HashSet<u64> = a[..256].iter().map(|t| t / 1000).collect();
    assert!(
        shards.len() >= 2,
        "first batch drew only from shards {shards:?}"
    );
    let in_place = a
        .iter()
        .enumerate()
        .filter(|(i, t)| **t == *i as u64)
        .count();
    assert!(in_place < 30, "{in_place} tokens stayed in place");
}

#[test]
fn split_by_shard_gives_disjoint_train_and_heldout_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_run(tmp.path(), 4500, Dtype::F16); // 1000 rows a shard: 5 shards
    let (train, held) = m.split_shards(0.2);
    assert_eq!(train, [0, 1, 2, 3]);
    assert_eq!(held, [4]);
    let run = open(tmp.path());
    let (tr, _) = read_all(
        &run,
        RESID,
        &ReadOptions {
            shards: Some(train),
            ..ReadOptions::default()
        },
    );
    let (he, _) = read_all(
        &run,
        RESID,
        &ReadOptions {
            shards: Some(held),
            ..ReadOptions::default()
        },
    );
    assert_eq!(tr, (0..4000).collect::<Vec<u64>>());
    assert_eq!(he, (4000..4500).collect::<Vec<u64>>());
    // Edge cases of the split rule.
    assert_eq!(m.split_shards(0.0), (vec![0, 1, 2, 3, 4], vec![]));
    assert_eq!(m.split_shards(0.01).1, [4]);
    assert_eq!(
        m.split_shards(1.0).0,
        [0],
        "at least one training shard is kept"
    );
}

#[test]
fn dropping_the_reader_early_stops_the_background_thread() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), 3000, Dtype::F32);
    let run = open(tmp.path());
    let mut it = run
        .batches(
            RESID,
            &ReadOptions {
                batch_tokens: 10,
                prefetch_batches: 1,
                ..ReadOptions::default()
            },
        )
        .unwrap();
    assert_eq!(it.next().unwrap().unwrap().rows(), 10);
    drop(it); // must return (joins the producer), not hang
}

/// The dotted paths of a Parquet file's leaf columns, as other tools see them.
fn leaf_columns(path: &std::path::Path) -> (Vec<String>, i64) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let meta = r.metadata().file_metadata();
    let cols = meta
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.path().string())
        .collect();
    (cols, meta.num_rows())
}

#[test]
fn parquet_files_carry_the_documented_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let m = write_run(tmp.path(), 500, Dtype::F16);
    let (cols, rows) = leaf_columns(&tmp.path().join(&m.shards[0].activations.path));
    assert_eq!(
        cols,
        [
            "token_index",
            "blocks.0.hook_resid_post.list.item",
            "blocks.0.attn.hook_z.list.item"
        ]
    );
    assert_eq!(rows, 500);
    let (cols, rows) = leaf_columns(&tmp.path().join(&m.shards[0].tokens.path));
    assert_eq!(
        cols,
        [
            "token_index",
            "context_id",
            "context_pos",
            "doc_id",
            "doc_pos",
            "token_id"
        ]
    );
    assert_eq!(rows, 500);
}

/// A shard rewritten as another tool might write it (columns in another order, dictionary
/// encoding, data page v2, zstd) reads back the same values through the general decoder.
#[test]
fn shards_written_by_other_tools_read_back_identically() {
    use arrow::datatypes::Schema;
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::{WriterProperties, WriterVersion};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let m = write_run(tmp.path(), 1800, Dtype::F16);
    let run = open(tmp.path());
    let before: Vec<_> = [RESID, Z]
        .iter()
        .map(|h| read_all(&run, h, &ReadOptions::default()))
        .collect();

    let path = tmp.path().join(&m.shards[0].activations.path);
    let batches: Vec<_> =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
    // Reverse the column order.
    let schema = batches[0].schema();
    let order: Vec<usize> = (0..schema.fields().len()).rev().collect();
    let reordered = Arc::new(Schema::new(
        order
            .iter()
            .map(|&i| schema.field(i).clone())
            .collect::<Vec<_>>(),
    ));
    let props = WriterProperties::builder()
        .set_dictionary_enabled(true)
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = std::fs::File::create(&path).unwrap();
    let mut w = ArrowWriter::try_new(file, reordered.clone(), Some(props)).unwrap();
    for b in &batches {
        let cols = order.iter().map(|&i| b.column(i).clone()).collect();
        w.write(&arrow::record_batch::RecordBatch::try_new(reordered.clone(), cols).unwrap())
            .unwrap();
    }
    w.close().unwrap();
    let bytes = std::fs::metadata(&path).unwrap().len();
    let sha = saescope_store::sha256_file(&path).unwrap();
    edit_manifest(tmp.path(), |v| {
        v["shards"][0]["activations"]["bytes"] = bytes.into();
        v["shards"][0]["activations"]["sha256"] = sha.into();
    });

    let run = open(tmp.path());
    run.check_shard(0, true).unwrap();
    let after: Vec<_> = [RESID, Z]
        .iter()
        .map(|h| read_all(&run, h, &ReadOptions::default()))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn a_run_of_one_shard_is_split_by_whole_contexts() {
    let tmp = tempfile::tempdir().unwrap();
    // 900 tokens, contexts of 64: one shard, 15 contexts (the last one short).
    let m = write_run(tmp.path(), 900, Dtype::F16);
    assert_eq!(m.shards.len(), 1);
    let s = m.heldout_split(0.1);
    // ceil(0.1 x 15) = 2 contexts held out: tokens from 13 x 64 on.
    assert_eq!(s.train.tokens, 0..832);
    assert_eq!(s.heldout.tokens, 832..900);
    assert_eq!(
        (s.train.shards.clone(), s.heldout.shards.clone()),
        (vec![0], vec![0])
    );
    assert!(!s.heldout.is_empty());
    // Disjoint, and together every token.
    assert_eq!(s.train.tokens.end, s.heldout.tokens.start);
    // At least one context each way, whatever the fraction.
    assert_eq!(m.heldout_split(0.999).train.tokens, 0..64);
    assert_eq!(m.heldout_split(0.001).heldout.tokens, 832 + 64..900);
    // No fraction, or a single context: nothing held out.
    assert!(m.heldout_split(0.0).heldout.is_empty());
    let one = tempfile::tempdir().unwrap();
    let m1 = write_run(one.path(), 50, Dtype::F16);
    assert!(m1.heldout_split(0.1).heldout.is_empty());
    assert_eq!(m1.heldout_split(0.1).train.tokens, 0..50);

    // Several shards: whole shards, as split_shards says.
    let many = tempfile::tempdir().unwrap();
    let m5 = write_run(many.path(), 4500, Dtype::F16);
    let s5 = m5.heldout_split(0.2);
    assert_eq!(
        (s5.train.shards, s5.train.tokens),
        (vec![0, 1, 2, 3], 0..4000)
    );
    assert_eq!(
        (s5.heldout.shards, s5.heldout.tokens),
        (vec![4], 4000..4500)
    );
}
