//! Example windows for autointerp: for each latent of a dictionary, the windows its explainer
//! reads (the train set) and the windows its scorers read (the test set), each with activating
//! windows stratified by activation and windows where the latent is silent. One Parquet table,
//! `DICT/examples.parquet`, sorted by latent; the layout is in `store/README.md`.

use crate::error::{Result, StoreError};
use crate::features::{
    Cols, batch, f32s, list_f32, list_field, list_u32, read_batches, u32s, write_table,
};
use arrow::array::{ArrayRef, Int16Array, UInt8Array, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field};
use std::path::Path;
use std::sync::Arc;

/// File name of the examples table in a dictionary directory.
pub const EXAMPLES_FILE: &str = "examples.parquet";
/// Rows per row group: a few latents' examples, so one latent is a small read.
pub const EXAMPLE_ROWS_PER_GROUP: usize = 1_024;

/// Which set a window belongs to; the two never share a window, nor (by default) a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExampleSet {
    /// Shown to the explainer.
    Train,
    /// Kept for the scorers.
    Test,
}

/// Why a window is in a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExampleKind {
    /// The latent fires in it.
    Activating,
    /// A window drawn at random among those where the latent is silent.
    Random,
    /// A silent window where one of the latent's nearest decoder neighbours fires most: a hard
    /// negative.
    Neighbour,
}

/// One window of one latent.
#[derive(Clone, Debug, PartialEq)]
pub struct ExampleRow {
    /// The latent.
    pub latent: u32,
    /// Train or test.
    pub set: ExampleSet,
    /// Activating, random silent, or neighbour silent.
    pub kind: ExampleKind,
    /// Activating windows: the activation bin, 0 the strongest (equal-count bins of the set's
    /// activating windows ranked by their largest activation); −1 for silent windows.
    pub bin: i16,
    /// For neighbour windows, the neighbour whose firing chose it; else the latent itself.
    pub source: u32,
    /// Token index (in the run) of the window's first token.
    pub start: u64,
    /// The window's token ids.
    pub token_ids: Vec<u32>,
    /// The latent's activation at each token (zeros in a silent window).
    pub acts: Vec<f32>,
}

impl ExampleRow {
    /// The largest activation in the window.
    pub fn max_act(&self) -> f32 {
        self.acts.iter().copied().fold(0.0, f32::max)
    }
}

fn set_code(s: ExampleSet) -> u8 {
    match s {
        ExampleSet::Train => 0,
        ExampleSet::Test => 1,
    }
}

pub(crate) fn kind_code(k: ExampleKind) -> u8 {
    match k {
        ExampleKind::Activating => 0,
        ExampleKind::Random => 1,
        ExampleKind::Neighbour => 2,
    }
}

pub(crate) fn kind_from_code(c: u8) -> Option<ExampleKind> {
    match c {
        0 => Some(ExampleKind::Activating),
        1 => Some(ExampleKind::Random),
        2 => Some(ExampleKind::Neighbour),
        _ => None,
    }
}

/// Writes the table (rows sorted by latent, as given) under a temporary name, then renames it
/// into place.
pub fn write_examples(path: &Path, rows: &[ExampleRow]) -> Result<()> {
    if let Some(w) = rows.windows(2).find(|w| w[0].latent > w[1].latent) {
        return Err(StoreError::Schema {
            path: path.to_owned(),
            message: format!(
                "rows are not sorted by latent ({} after {})",
                w[1].latent, w[0].latent
            ),
        });
    }
    let fields = vec![
        Field::new("latent", DataType::UInt32, false),
        Field::new("set", DataType::UInt8, false),
        Field::new("kind", DataType::UInt8, false),
        Field::new("bin", DataType::Int16, false),
        Field::new("source", DataType::UInt32, false),
        Field::new("start", DataType::UInt64, false),
        list_field("token_ids", DataType::UInt32),
        list_field("acts", DataType::Float32),
    ];
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.latent))),
        Arc::new(UInt8Array::from_iter_values(
            rows.iter().map(|r| set_code(r.set)),
        )),
        Arc::new(UInt8Array::from_iter_values(
            rows.iter().map(|r| kind_code(r.kind)),
        )),
        Arc::new(Int16Array::from_iter_values(rows.iter().map(|r| r.bin))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.source))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.start))),
        list_u32(rows.iter().map(|r| r.token_ids.clone())),
        list_f32(rows.iter().map(|r| r.acts.clone())),
    ];
    write_table(path, batch(path, fields, columns)?, EXAMPLE_ROWS_PER_GROUP)
}

/// Reads the whole table, refusing unknown set or kind codes by name.
pub fn read_examples(path: &Path) -> Result<Vec<ExampleRow>> {
    let mut rows = Vec::new();
    for b in read_batches(path)? {
        let c = Cols { path, batch: &b };
        let latent = c.typed::<UInt32Array>("latent")?;
        let set = c.typed::<UInt8Array>("set")?;
        let kind = c.typed::<UInt8Array>("kind")?;
        let bin = c.typed::<Int16Array>("bin")?;
        let source = c.typed::<UInt32Array>("source")?;
        let start = c.typed::<UInt64Array>("start")?;
        let (ids, acts) = (c.list("token_ids")?, c.list("acts")?);
        for i in 0..b.num_rows() {
            let bad = |what: &str, v: u8| StoreError::Schema {
                path: path.to_owned(),
                message: format!("row {i}: unknown {what} code {v}"),
            };
            rows.push(ExampleRow {
                latent: latent.value(i),
                set: match set.value(i) {
                    0 => ExampleSet::Train,
                    1 => ExampleSet::Test,
                    v => return Err(bad("set", v)),
                },
                kind: kind_from_code(kind.value(i)).ok_or_else(|| bad("kind", kind.value(i)))?,
                bin: bin.value(i),
                source: source.value(i),
                start: start.value(i),
                token_ids: u32s(ids, i),
                acts: f32s(acts, i),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_the_round_trip_and_unsorted_rows_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EXAMPLES_FILE);
        let rows = vec![
            ExampleRow {
                latent: 3,
                set: ExampleSet::Train,
                kind: ExampleKind::Activating,
                bin: 0,
                source: 3,
                start: 64,
                token_ids: vec![1, 2, 3],
                acts: vec![0.0, 2.5, 0.0],
            },
            ExampleRow {
                latent: 7,
                set: ExampleSet::Test,
                kind: ExampleKind::Neighbour,
                bin: -1,
                source: 9,
                start: 96,
                token_ids: vec![4, 5],
                acts: vec![0.0, 0.0],
            },
        ];
        write_examples(&path, &rows).unwrap();
        assert_eq!(read_examples(&path).unwrap(), rows);
        assert_eq!(rows[0].max_act(), 2.5);
        let reversed: Vec<_> = rows.iter().rev().cloned().collect();
        let e = write_examples(&path, &reversed).unwrap_err();
        assert!(e.to_string().contains("not sorted by latent"), "{e}");
        assert_eq!(
            read_examples(&path).unwrap(),
            rows,
            "the old table is intact"
        );
    }
}
