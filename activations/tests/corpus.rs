//! Corpus readers: every source kind, in a fixed order, with clear errors.

use saescope_activations::corpus::{CorpusSource, brown_to_text, decode_lossy};
use std::sync::Arc;

fn texts(src: &CorpusSource) -> Vec<String> {
    src.documents().unwrap().map(|d| d.unwrap().text).collect()
}

#[test]
fn brown_tags_are_stripped_and_punctuation_attached() {
    let tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc left/vbd ./.\n\tIt/pps was/bedz n't/* over/rp ./.\n\n\tNew/jj paragraph/nn ./.\n";
    assert_eq!(
        brown_to_text(tagged),
        "The jury said \" no evidence \", and left. It wasn't over.\n\nNew paragraph."
    );
}

#[test]
fn invalid_utf8_is_replaced_and_counted() {
    let d = decode_lossy(b"ok \xff\xfe ok \xe2\x82 end");
    assert_eq!(d.text, "ok \u{FFFD}\u{FFFD} ok \u{FFFD} end");
    assert_eq!(d.replaced, 3);
}

#[test]
fn text_directories_read_in_path_order() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("sub")).unwrap();
    std::fs::write(tmp.path().join("b.txt"), "second").unwrap();
    std::fs::write(tmp.path().join("a.txt"), "first").unwrap();
    std::fs::write(tmp.path().join("sub/c.txt"), "third").unwrap();
    std::fs::write(tmp.path().join("notes.md"), "ignored").unwrap();
    assert_eq!(
        texts(&CorpusSource::TextDir(tmp.path().to_owned())),
        ["first", "second", "third"]
    );
    let missing = CorpusSource::TextDir(tmp.path().join("nope"));
    assert!(
        missing
            .documents()
            .err()
            .unwrap()
            .to_string()
            .contains("not a directory")
    );
}

#[test]
fn jsonl_reads_the_chosen_field_and_names_bad_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("c.jsonl");
    std::fs::write(
        &p,
        "{\"text\": \"one\", \"id\": 1}\n\n{\"body\": \"two\", \"text\": \"deux\"}\n",
    )
    .unwrap();
    assert_eq!(
        texts(&CorpusSource::Jsonl {
            path: p.clone(),
            column: "text".into()
        }),
        ["one", "deux"]
    );
    let src = CorpusSource::Jsonl {
        path: p.clone(),
        column: "body".into(),
    };
    let all: Vec<_> = src.documents().unwrap().collect();
    let e = all[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("c.jsonl: line 1: no field `body`"), "{e}");
    assert_eq!(all[1].as_ref().unwrap().text, "two");
    std::fs::write(&p, "{not json}\n").unwrap();
    let e = CorpusSource::Jsonl {
        path: p,
        column: "text".into(),
    }
    .documents()
    .unwrap()
    .next()
    .unwrap()
    .unwrap_err();
    assert!(e.to_string().contains("line 1: not JSON"), "{e}");
}

#[test]
fn parquet_reads_a_text_column_and_refuses_others() {
    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("c.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("content", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int32Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec![Some("alpha"), None, Some("gamma")])),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&p).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    assert_eq!(
        texts(&CorpusSource::Parquet {
            path: p.clone(),
            column: "content".into()
        }),
        ["alpha", "gamma"]
    );
    let e = CorpusSource::Parquet {
        path: p.clone(),
        column: "text".into(),
    }
    .documents()
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no column `text` (it has: id, content)"), "{e}");
    let e = CorpusSource::Parquet {
        path: p,
        column: "id".into(),
    }
    .documents()
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("column `id` is Int32, not text"), "{e}");
}
