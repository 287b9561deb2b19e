use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::inference::Embeddings;

fn item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

/// Columns `text` (Utf8) and `embedding` (FixedSizeList<Float32> of `dim`).
pub(super) fn schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("text", DataType::Utf8, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(item(), dim as i32),
            false,
        ),
    ]))
}

/// One record batch of [`schema`].
pub(super) fn record_batch(texts: &[String], embeddings: &Embeddings) -> Result<RecordBatch> {
    let arrow_error = |e: arrow::error::ArrowError| Error::Invalid(e.to_string());
    let values = Float32Array::from(embeddings.data.clone());
    let list = FixedSizeListArray::try_new(item(), embeddings.dim as i32, Arc::new(values), None)
        .map_err(arrow_error)?;
    let columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(texts.to_vec())), Arc::new(list)];
    debug_assert_eq!(
        columns[1].data_type(),
        schema(embeddings.dim).field(1).data_type()
    );
    RecordBatch::try_new(schema(embeddings.dim), columns).map_err(arrow_error)
}
