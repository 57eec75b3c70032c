//! The Arrow schemas of the two Parquet files that make a shard.

use crate::manifest::{Dtype, HookInfo};
use arrow::datatypes::{DataType, Field, Schema};
use std::collections::HashMap;
use std::sync::Arc;

/// Column of both files of a shard: the token's global index in the run.
pub const TOKEN_INDEX: &str = "token_index";
/// Token-file column: the packed context (model input row) the token was in.
pub const CONTEXT_ID: &str = "context_id";
/// Token-file column: the token's position inside its context (0 is the first).
pub const CONTEXT_POS: &str = "context_pos";
/// Token-file column: the source document; null for tokens the harvester inserted.
pub const DOC_ID: &str = "doc_id";
/// Token-file column: the position in the document's token sequence; null if inserted.
pub const DOC_POS: &str = "doc_pos";
/// Token-file column: the token's id in the tokenizer's vocabulary.
pub const TOKEN_ID: &str = "token_id";

pub(crate) fn element_type(dtype: Dtype) -> DataType {
    match dtype {
        Dtype::F32 => DataType::Float32,
        Dtype::F16 => DataType::Float16,
        Dtype::Bf16 => DataType::FixedSizeBinary(2),
    }
}

/// The list type of a hook column: a fixed-size list of `dim` non-null elements.
pub(crate) fn hook_type(hook: &HookInfo) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new("item", element_type(hook.dtype), false)),
        hook.dim() as i32,
    )
}

/// Activation file: `token_index`, then one column per hook point, named after it.
pub(crate) fn activation_schema(hooks: &[HookInfo]) -> Arc<Schema> {
    let mut fields = vec![Field::new(TOKEN_INDEX, DataType::UInt64, false)];
    for h in hooks {
        let shape = h
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let meta = HashMap::from([
            ("saescope.shape".to_owned(), shape),
            ("saescope.dtype".to_owned(), h.dtype.name().to_owned()),
        ]);
        fields.push(Field::new(&h.name, hook_type(h), false).with_metadata(meta));
    }
    Arc::new(Schema::new(fields))
}

/// Token file: where every harvested token came from. `doc_id`/`doc_pos` are null for tokens the
/// harvester inserted (BOS at a context's start), which belong to no document.
pub(crate) fn token_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(TOKEN_INDEX, DataType::UInt64, false),
        Field::new(CONTEXT_ID, DataType::UInt64, false),
        Field::new(CONTEXT_POS, DataType::UInt32, false),
        Field::new(DOC_ID, DataType::UInt64, true),
        Field::new(DOC_POS, DataType::UInt32, true),
        Field::new(TOKEN_ID, DataType::UInt32, false),
    ]))
}

/// Explains how `actual` differs from `expected`, or `None` when it is compatible: same names and
/// types in the same order (field metadata is not compared).
pub(crate) fn schema_mismatch(expected: &Schema, actual: &Schema) -> Option<String> {
    for f in expected.fields() {
        match actual.field_with_name(f.name()) {
            Err(_) => return Some(format!("column `{}` is missing", f.name())),
            Ok(a) if !types_match(a.data_type(), f.data_type()) => {
                return Some(format!(
                    "column `{}` has type {}, expected {}",
                    f.name(),
                    a.data_type(),
                    f.data_type()
                ));
            }
            Ok(_) => {}
        }
    }
    if actual.fields().len() != expected.fields().len() {
        let extra: Vec<_> = actual
            .fields()
            .iter()
            .filter(|f| expected.field_with_name(f.name()).is_err())
            .map(|f| f.name().as_str())
            .collect();
        return Some(format!("unexpected columns: {}", extra.join(", ")));
    }
    None
}

/// Compares types ignoring the list's inner field name and nullability, which other writers
/// (pyarrow, polars) choose differently.
fn types_match(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::FixedSizeList(fa, na), DataType::FixedSizeList(fb, nb)) => {
            na == nb && types_match(fa.data_type(), fb.data_type())
        }
        _ => a == b,
    }
}
