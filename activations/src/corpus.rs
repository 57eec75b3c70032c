//! Text corpora as a deterministic stream of documents: the bundled corpora by name, a directory
//! of text files, JSON Lines, or Parquet with a text column. The same source always yields the
//! same documents in the same order, which is what makes a resumed harvest identical to an
//! uninterrupted one.

use crate::assets::{cache_dir, installed};
use crate::error::{AssetError, CorpusError};
use arrow::array::AsArray;
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, CorpusError>;

fn err(path: &Path, message: impl Into<String>) -> CorpusError {
    CorpusError::Source {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Where the text comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum CorpusSource {
    /// The Brown Corpus in the asset directory (tags stripped): one document per file.
    Brown(PathBuf),
    /// Shakespeare's works in the asset directory: one document per play or poem.
    Shakespeare(PathBuf),
    /// `*.txt` files under a directory, in path order: one document per file.
    TextDir(PathBuf),
    /// One JSON object per line; the document is its `column` field.
    Jsonl {
        /// The `.jsonl` (or `.json`) file; blank lines are skipped.
        path: PathBuf,
        /// The field holding each document's text (`--text-column`, default `text`).
        column: String,
    },
    /// A Parquet file (or directory of them); the document is the `column` string column.
    Parquet {
        /// A `.parquet` file, or a directory of them (read in path order, subdirectories too).
        path: PathBuf,
        /// The string column holding each document's text (`--text-column`, default `text`).
        column: String,
    },
}

/// A document's text, plus how many invalid UTF-8 sequences were replaced to get it.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The text, each invalid UTF-8 sequence replaced by U+FFFD.
    pub text: String,
    /// Invalid UTF-8 sequences replaced (0 for clean text).
    pub replaced: usize,
}

/// Decodes bytes as UTF-8, replacing each invalid sequence by U+FFFD and counting them.
pub fn decode_lossy(bytes: &[u8]) -> Document {
    let mut text = String::with_capacity(bytes.len());
    let mut replaced = 0;
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            text.push('\u{FFFD}');
            replaced += 1;
        }
    }
    Document { text, replaced }
}

/// Turns a Brown Corpus file (`word/tag` tokens, a sentence a line, blank lines between
/// paragraphs) into plain text.
pub fn brown_to_text(tagged: &str) -> String {
    let mut paragraphs = Vec::new();
    let mut current = String::new();
    for line in tagged.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
            continue;
        }
        for token in line.split_whitespace() {
            let word = token.rsplit_once('/').map_or(token, |(w, _)| w);
            let word = match word {
                "``" | "''" => "\"",
                w => w,
            };
            let attach = matches!(word, "," | "." | ";" | ":" | "?" | "!" | ")" | "'s" | "n't")
                || current.ends_with('(')
                || current.is_empty();
            if !attach {
                current.push(' ');
            }
            current.push_str(word);
        }
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    paragraphs.join("\n\n")
}

fn sorted_files(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| err(&d, e.to_string()))?;
        for e in entries {
            let path = e.map_err(|e| err(&d, e.to_string()))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().and_then(|n| n.to_str()).is_some_and(&keep) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

impl CorpusSource {
    /// The corpus a user names: `brown` or `shakespeare` (bundled, installed by `saescope
    /// setup`), a directory of `.txt` files, a `.jsonl` file, or a Parquet file or directory;
    /// `text_column` is the JSONL field or Parquet column holding the text.
    pub fn parse(spec: &str, text_column: &str) -> std::result::Result<CorpusSource, AssetError> {
        let bundled = |name: &str| -> std::result::Result<PathBuf, AssetError> {
            Ok(installed(name, "corpus")?.dir(&cache_dir()))
        };
        let column = text_column.to_owned();
        Ok(match spec {
            "brown" => CorpusSource::Brown(bundled("brown")?),
            "shakespeare" => CorpusSource::Shakespeare(bundled("shakespeare")?),
            path => {
                let p = PathBuf::from(path);
                if !p.exists() {
                    return Err(AssetError::Corpus(format!(
                        "--corpus {path}: no such file or directory (bundled corpora: brown, shakespeare)"
                    )));
                }
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                let has_parquet = p.is_dir()
                    && std::fs::read_dir(&p)
                        .map_err(|e| AssetError::Io {
                            path: p.clone(),
                            source: e,
                        })?
                        .any(|e| {
                            e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "parquet"))
                        });
                match ext {
                    "jsonl" | "json" => CorpusSource::Jsonl { path: p, column },
                    "parquet" => CorpusSource::Parquet { path: p, column },
                    _ if has_parquet => CorpusSource::Parquet { path: p, column },
                    _ if p.is_dir() => CorpusSource::TextDir(p),
                    _ => {
                        return Err(AssetError::Corpus(format!(
                            "--corpus {path}: expected a directory of .txt files, a .jsonl file or Parquet"
                        )));
                    }
                }
            }
        })
    }

    /// A short name for run manifests.
    pub fn name(&self) -> String {
        match self {
            CorpusSource::Brown(_) => "brown".into(),
            CorpusSource::Shakespeare(_) => "shakespeare".into(),
            CorpusSource::TextDir(p)
            | CorpusSource::Jsonl { path: p, .. }
            | CorpusSource::Parquet { path: p, .. } => p.display().to_string(),
        }
    }

    /// Every document, in a fixed order. Checks the source exists and is readable first.
    pub fn documents(&self) -> Result<Box<dyn Iterator<Item = Result<Document>>>> {
        match self {
            CorpusSource::Brown(dir) => {
                let files = sorted_files(dir, |n| {
                    n.len() == 4 && n.starts_with('c') && n[2..].bytes().all(|b| b.is_ascii_digit())
                })?;
                Ok(Box::new(files.into_iter().map(|f| {
                    let bytes = std::fs::read(&f).map_err(|e| err(&f, e.to_string()))?;
                    let doc = decode_lossy(&bytes);
                    Ok(Document {
                        text: brown_to_text(&doc.text),
                        replaced: doc.replaced,
                    })
                })))
            }
            CorpusSource::Shakespeare(dir) => {
                let files = sorted_files(dir, |n| n.ends_with("_gut.txt"))?;
                Ok(Box::new(files.into_iter().map(read_text)))
            }
            CorpusSource::TextDir(dir) => {
                if !dir.is_dir() {
                    return Err(err(dir, "not a directory"));
                }
                let files = sorted_files(dir, |n| n.ends_with(".txt"))?;
                Ok(Box::new(files.into_iter().map(read_text)))
            }
            CorpusSource::Jsonl { path, column } => jsonl(path, column),
            CorpusSource::Parquet { path, column } => parquet_texts(path, column),
        }
    }
}

fn read_text(path: PathBuf) -> Result<Document> {
    let bytes = std::fs::read(&path).map_err(|e| err(&path, e.to_string()))?;
    Ok(decode_lossy(&bytes))
}

fn jsonl(path: &Path, column: &str) -> Result<Box<dyn Iterator<Item = Result<Document>>>> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
    let mut reader = std::io::BufReader::new(file);
    let (path, column) = (path.to_owned(), column.to_owned());
    let mut line_no = 0usize;
    let mut buf = Vec::new();
    Ok(Box::new(std::iter::from_fn(move || {
        loop {
            buf.clear();
            line_no += 1;
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(err(&path, e.to_string()))),
            }
            let doc = decode_lossy(&buf);
            if doc.text.trim().is_empty() {
                continue;
            }
            let line_err = |message: String| CorpusError::Line {
                path: path.clone(),
                line: line_no,
                message,
            };
            let parsed = match serde_json::from_str::<serde_json::Value>(&doc.text) {
                Ok(v) => v,
                Err(e) => return Some(Err(line_err(format!("not JSON: {e}")))),
            };
            return Some(match parsed.get(&column) {
                Some(serde_json::Value::String(s)) => Ok(Document {
                    text: s.clone(),
                    replaced: doc.replaced,
                }),
                Some(other) => Err(line_err(format!(
                    "field `{column}` is not a string: {other}"
                ))),
                None => Err(line_err(format!(
                    "no field `{column}` (choose one with --text-column)"
                ))),
            });
        }
    })))
}

/// Opens one Parquet file's text column as a stream of record batches.
fn open_text_column(
    f: &Path,
    column: &str,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let file = std::fs::File::open(f).map_err(|e| err(f, e.to_string()))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(f, e.to_string()))?;
    let schema = builder.schema().clone();
    let idx = schema.index_of(column).map_err(|_| {
        let names: Vec<_> = schema.fields().iter().map(|c| c.name().as_str()).collect();
        err(
            f,
            format!(
                "no column `{column}` (it has: {}); choose one with --text-column",
                names.join(", ")
            ),
        )
    })?;
    if !matches!(
        schema.field(idx).data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(err(
            f,
            format!(
                "column `{column}` is {}, not text",
                schema.field(idx).data_type()
            ),
        ));
    }
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [idx]);
    builder
        .with_projection(mask)
        .with_batch_size(1024)
        .build()
        .map_err(|e| err(f, e.to_string()))
}

fn parquet_texts(path: &Path, column: &str) -> Result<Box<dyn Iterator<Item = Result<Document>>>> {
    let files = if path.is_dir() {
        sorted_files(path, |n| n.ends_with(".parquet"))?
    } else {
        vec![path.to_owned()]
    };
    // Check every file's column up front, so a bad file fails before any work is done.
    for f in &files {
        open_text_column(f, column)?;
    }
    let column = column.to_owned();
    let mut files = files.into_iter();
    let mut current: Option<(
        PathBuf,
        parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    )> = None;
    let mut pending = std::collections::VecDeque::new();
    Ok(Box::new(std::iter::from_fn(move || {
        loop {
            if let Some(text) = pending.pop_front() {
                return Some(Ok(Document { text, replaced: 0 }));
            }
            if current.is_none() {
                let f = files.next()?;
                match open_text_column(&f, &column) {
                    Ok(r) => current = Some((f, r)),
                    Err(e) => return Some(Err(e)),
                }
            }
            let (f, reader) = current.as_mut().expect("opened above");
            match reader.next() {
                None => current = None,
                Some(Err(e)) => return Some(Err(err(f, e.to_string()))),
                Some(Ok(batch)) => {
                    let col = batch.column(0);
                    match col.data_type() {
                        DataType::Utf8 => pending
                            .extend(col.as_string::<i32>().iter().flatten().map(str::to_owned)),
                        DataType::LargeUtf8 => pending
                            .extend(col.as_string::<i64>().iter().flatten().map(str::to_owned)),
                        _ => {
                            pending.extend(col.as_string_view().iter().flatten().map(str::to_owned))
                        }
                    }
                }
            }
        }
    })))
}
