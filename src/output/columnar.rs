use std::io::Write;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use crate::inference::Embeddings;

/// Columns `text` (Utf8) and `embedding` (FixedSizeList<Float32>).
fn record_batch(texts: &[String], embeddings: &Embeddings) -> Result<RecordBatch, String> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let values = Float32Array::from(embeddings.data.clone());
    let list = FixedSizeListArray::try_new(item, embeddings.dim as i32, Arc::new(values), None)
        .map_err(|e| e.to_string())?;
    let schema = Schema::new(vec![
        Field::new("text", DataType::Utf8, false),
        Field::new("embedding", list.data_type().clone(), false),
    ]);
    let columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(texts.to_vec())), Arc::new(list)];
    RecordBatch::try_new(Arc::new(schema), columns).map_err(|e| e.to_string())
}

pub(super) fn write_parquet(
    out: &mut (impl Write + Send),
    texts: &[String],
    embeddings: &Embeddings,
) -> Result<(), String> {
    let batch = record_batch(texts, embeddings)?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(out, batch.schema(), None)
        .map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(())
}

pub(super) fn write_arrow(
    out: &mut impl Write,
    texts: &[String],
    embeddings: &Embeddings,
) -> Result<(), String> {
    let batch = record_batch(texts, embeddings)?;
    let mut writer =
        arrow::ipc::writer::FileWriter::try_new(out, &batch.schema()).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(())
}
