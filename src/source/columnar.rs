use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};

use crate::error::{Error, Result};
use crate::source::{Item, TextStream, missing_column};

pub(super) fn open_parquet(path: &Path, column: &str) -> Result<TextStream> {
    let batches = parquet_column(path, column, |t| check_type(path, t, column))?;
    Ok(flatten(batches, 0))
}

pub(super) fn open_arrow(path: &Path, column: &str) -> Result<TextStream> {
    let (batches, idx) = arrow_column(path, column, |t| check_type(path, t, column))?;
    Ok(flatten(batches, idx))
}

/// Record batches, errors carrying the file.
pub(super) type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// The record batches of a Parquet file projected onto `column` (so the
/// column is at index 0), after `check` has accepted its type.
pub(super) fn parquet_column(
    path: &Path,
    column: &str,
    check: impl FnOnce(&DataType) -> Result<()>,
) -> Result<Batches> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::data(path, format!("not a readable Parquet file: {e}")))?;
    let idx = column_index(path, builder.schema(), column)?;
    check(builder.schema().field(idx).data_type())?;
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [idx]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| Error::data(path, e.to_string()))?;
    let path = path.to_path_buf();
    Ok(Box::new(reader.map(move |b| {
        b.map_err(|e| Error::data(&path, e.to_string()))
    })))
}

/// The record batches of an Arrow IPC file (Feather v2) or an Arrow IPC
/// stream (the format of Hugging Face `datasets` cache files), uncompressed
/// or compressed with LZ4 or zstd, and the index of `column`, after `check`
/// has accepted its type.
pub(super) fn arrow_column(
    path: &Path,
    column: &str,
    check: impl FnOnce(&DataType) -> Result<()>,
) -> Result<(Batches, usize)> {
    use arrow::ipc::reader::{FileReader, StreamReader};
    let open = || File::open(path).map_err(|e| Error::io(path, e));
    let unreadable = |e: arrow::error::ArrowError| {
        Error::data(
            path,
            format!("not a readable Arrow IPC file or stream: {e}"),
        )
    };
    let mut magic = [0u8; 6];
    let is_file =
        std::io::Read::read_exact(&mut open()?, &mut magic).is_ok() && &magic == b"ARROW1";
    let (schema, batches): (SchemaRef, Box<dyn Iterator<Item = _> + Send>) = if is_file {
        let reader = FileReader::try_new(open()?, None).map_err(unreadable)?;
        (reader.schema(), Box::new(reader))
    } else {
        let reader =
            StreamReader::try_new(std::io::BufReader::new(open()?), None).map_err(unreadable)?;
        (reader.schema(), Box::new(reader))
    };
    let idx = column_index(path, &schema, column)?;
    check(schema.field(idx).data_type())?;
    let path = path.to_path_buf();
    Ok((
        Box::new(batches.map(move |b| b.map_err(|e| Error::data(&path, e.to_string())))),
        idx,
    ))
}

/// Record batches → one item per row, a batch at a time.
fn flatten(batches: Batches, idx: usize) -> TextStream {
    Box::new(batches.flat_map(move |batch| -> Vec<Result<Item>> {
        match batch {
            Ok(b) => strings(&b, idx).into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        }
    }))
}

fn column_index(path: &Path, schema: &SchemaRef, column: &str) -> Result<usize> {
    schema.index_of(column).map_err(|_| {
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        missing_column(path, column, &names)
    })
}

fn check_type(path: &Path, data_type: &DataType, column: &str) -> Result<()> {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(()),
        other => Err(Error::data(
            path,
            format!("column `{column}` has type {other}, expected a string column"),
        )),
    }
}

fn strings(batch: &RecordBatch, idx: usize) -> Vec<Item> {
    let array = batch.column(idx);
    match array.data_type() {
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .map(Item::from_text)
            .collect(),
        DataType::LargeUtf8 => array
            .as_string::<i64>()
            .iter()
            .map(Item::from_text)
            .collect(),
        DataType::Utf8View => array.as_string_view().iter().map(Item::from_text).collect(),
        _ => Vec::new(),
    }
}
