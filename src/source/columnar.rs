use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};

use crate::error::{Error, Result};
use crate::source::{Texts, missing_column, push_text};

pub(super) fn read_parquet(path: &Path, column: &str) -> Result<Texts> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::data(path, format!("not a readable Parquet file: {e}")))?;
    let idx = column_index(path, builder.schema(), column)?;
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [idx]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| Error::data(path, e.to_string()))?;
    let mut out = Texts::default();
    for batch in reader {
        let batch = batch.map_err(|e| Error::data(path, e.to_string()))?;
        // The projection leaves just the one column.
        collect_strings(path, &batch, 0, column, &mut out)?;
    }
    Ok(out)
}

pub(super) fn read_arrow(path: &Path, column: &str) -> Result<Texts> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = arrow::ipc::reader::FileReader::try_new(file, None)
        .map_err(|e| Error::data(path, format!("not a readable Arrow IPC file: {e}")))?;
    let idx = column_index(path, &reader.schema(), column)?;
    let mut out = Texts::default();
    for batch in reader {
        let batch = batch.map_err(|e| Error::data(path, e.to_string()))?;
        collect_strings(path, &batch, idx, column, &mut out)?;
    }
    Ok(out)
}

fn column_index(path: &Path, schema: &SchemaRef, column: &str) -> Result<usize> {
    schema.index_of(column).map_err(|_| {
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        missing_column(path, column, &names)
    })
}

fn collect_strings(
    path: &Path,
    batch: &RecordBatch,
    idx: usize,
    column: &str,
    out: &mut Texts,
) -> Result<()> {
    let array = batch.column(idx);
    match array.data_type() {
        DataType::Utf8 => {
            for v in array.as_string::<i32>() {
                push_text(out, v);
            }
        }
        DataType::LargeUtf8 => {
            for v in array.as_string::<i64>() {
                push_text(out, v);
            }
        }
        DataType::Utf8View => {
            for v in array.as_string_view() {
                push_text(out, v);
            }
        }
        other => {
            return Err(Error::data(
                path,
                format!("column `{column}` has type {other}, expected a string column"),
            ));
        }
    }
    Ok(())
}
