//! Vectors written by `embed`, read back as a stream of row-major f32
//! chunks in bounded memory: `.npy` (little-endian float32, C order),
//! `.parquet` and `.arrow` (an `embedding` column of `FixedSizeList<Float32>`
//! or `List<Float32>`), `.jsonl` (an `embedding` key).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type};

use super::columnar::{Batches, arrow_column, parquet_column};
use crate::error::{Error, Result};

/// The column (or JSON key) holding the vectors.
pub const COLUMN: &str = "embedding";
/// Bytes of f32 values per chunk (at least one row).
const CHUNK_BYTES: usize = 4 << 20;

/// An open vector file: its dimension, its row count where the format
/// records it, and its rows as row-major chunks.
pub struct VectorFile {
    path: PathBuf,
    dim: usize,
    rows: Option<u64>,
    chunks: Box<dyn Iterator<Item = Result<Vec<f32>>> + Send>,
}

impl std::fmt::Debug for VectorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorFile")
            .field("path", &self.path)
            .field("dim", &self.dim)
            .field("rows", &self.rows)
            .finish()
    }
}

impl VectorFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Rows in the file, where the header or metadata says (`.npy`, `.parquet`).
    pub fn rows(&self) -> Option<u64> {
        self.rows
    }
}

impl Iterator for VectorFile {
    /// `k × dim` values, `k ≥ 1`.
    type Item = Result<Vec<f32>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.chunks.next()
    }
}

/// Opens `path`, reading its header (or first rows) for the dimension.
pub fn open(path: &Path) -> Result<VectorFile> {
    if !path.exists() {
        return Err(Error::data(path, "no such file"));
    }
    if path.is_dir() {
        return Err(Error::data(path, "is a folder, expected a file"));
    }
    match super::extension(path).as_str() {
        "npy" => open_npy(path),
        "parquet" => {
            let rows = parquet_rows(path)?;
            let batches = parquet_column(path, COLUMN, |t| check_type(path, t))?;
            from_batches(path, batches, 0, Some(rows))
        }
        "arrow" | "ipc" | "feather" => {
            let (batches, idx) = arrow_column(path, COLUMN, |t| check_type(path, t))?;
            from_batches(path, batches, idx, None)
        }
        "jsonl" | "ndjson" => open_jsonl(path),
        _ => Err(Error::data(
            path,
            "unknown vector format (expected .npy, .parquet, .arrow or .jsonl)",
        )),
    }
}

/// Opens every file of one dataset; they must share a dimension.
pub fn open_all(paths: &[PathBuf]) -> Result<Vec<VectorFile>> {
    let files = paths.iter().map(|p| open(p)).collect::<Result<Vec<_>>>()?;
    if let Some(first) = files.first()
        && let Some(other) = files.iter().find(|f| f.dim != first.dim)
    {
        return Err(Error::data(
            &other.path,
            format!(
                "vectors of {} dimensions, but {} has {}",
                other.dim,
                first.path.display(),
                first.dim
            ),
        ));
    }
    Ok(files)
}

fn chunk_rows(dim: usize) -> usize {
    (CHUNK_BYTES / (4 * dim.max(1))).max(1)
}

// ---- .npy ----

fn open_npy(path: &Path) -> Result<VectorFile> {
    let bad = |m: String| Error::data(path, m);
    let mut file = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)
        .map_err(|_| bad("not a NumPy .npy file (too short)".into()))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(bad("not a NumPy .npy file (no \\x93NUMPY magic)".into()));
    }
    let len_bytes = if magic[6] == 1 { 2 } else { 4 };
    let mut len = [0u8; 4];
    file.read_exact(&mut len[..len_bytes])
        .map_err(|_| bad("truncated .npy header".into()))?;
    let header_len = u32::from_le_bytes(len) as usize;
    let mut header = vec![0u8; header_len];
    file.read_exact(&mut header)
        .map_err(|_| bad("truncated .npy header".into()))?;
    let header = String::from_utf8_lossy(&header);
    let (rows, dim) = npy_shape(&header).map_err(bad)?;
    let data_start = (8 + len_bytes + header_len) as u64;
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let expected = rows as u64 * dim as u64 * 4;
    if size - data_start != expected {
        return Err(bad(format!(
            "shape ({rows}, {dim}) needs {expected} bytes of data, the file has {}",
            size - data_start
        )));
    }
    let path_buf = path.to_path_buf();
    let mut left = rows;
    let step = chunk_rows(dim);
    let chunks = std::iter::from_fn(move || {
        if left == 0 || dim == 0 {
            return None;
        }
        let k = step.min(left);
        left -= k;
        let mut bytes = vec![0u8; k * dim * 4];
        Some(match file.read_exact(&mut bytes) {
            Ok(()) => Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()),
            Err(e) => Err(Error::io(&path_buf, e)),
        })
    });
    Ok(VectorFile {
        path: path.to_path_buf(),
        dim,
        rows: Some(rows as u64),
        chunks: Box::new(chunks),
    })
}

/// `(rows, dim)` from a `.npy` header dict, which must describe
/// little-endian float32 in C order.
fn npy_shape(header: &str) -> std::result::Result<(usize, usize), String> {
    let value = |key: &str| -> std::result::Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!(".npy header has no '{key}'"))?;
        let rest = header[at + key.len() + 2..].trim_start();
        Ok(rest.strip_prefix(':').unwrap_or(rest).trim_start())
    };
    let descr = value("descr")?;
    let descr = descr.split(['\'', '"']).nth(1).unwrap_or(descr);
    if descr != "<f4" {
        return Err(format!(
            "dtype {descr}, expected little-endian float32 (<f4); convert with arr.astype('<f4')"
        ));
    }
    if value("fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered array, expected C order (np.ascontiguousarray)".into());
    }
    let shape = value("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!("unreadable shape {shape}"))?;
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("unreadable shape ({inner})")))
        .collect::<std::result::Result<_, _>>()?;
    match dims[..] {
        [rows, dim] => Ok((rows, dim)),
        _ => Err(format!(
            "shape ({inner}), expected 2 dimensions (rows, dim)"
        )),
    }
}

// ---- .parquet / .arrow ----

fn parquet_rows(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::data(path, format!("not a readable Parquet file: {e}")))?;
    Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
}

fn check_type(path: &Path, t: &DataType) -> Result<()> {
    let item = match t {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            Some(f.data_type())
        }
        _ => None,
    };
    if item == Some(&DataType::Float32) {
        return Ok(());
    }
    Err(Error::data(
        path,
        format!("column `{COLUMN}` has type {t}, expected a list of Float32"),
    ))
}

/// Record batches → row-major chunks; the dimension is the list size, or
/// (variable lists) the length of the first row.
fn from_batches(
    path: &Path,
    batches: Batches,
    idx: usize,
    rows: Option<u64>,
) -> Result<VectorFile> {
    let mut batches = batches.peekable();
    let dim = loop {
        let Some(batch) = batches.peek() else {
            return Err(Error::data(path, "contains no vectors"));
        };
        let batch = batch
            .as_ref()
            .map_err(|e| Error::data(path, e.to_string()))?;
        if let Some(d) = first_len(batch.column(idx).as_ref()) {
            break d;
        }
        batches.next();
    };
    let path_buf = path.to_path_buf();
    let mut row = 0u64;
    let chunks = batches.map(move |batch| {
        let batch: RecordBatch = batch?;
        let values = flatten_lists(batch.column(idx).as_ref(), dim, row)
            .map_err(|m| Error::data(&path_buf, m))?;
        row += batch.num_rows() as u64;
        Ok(values)
    });
    Ok(VectorFile {
        path: path.to_path_buf(),
        dim,
        rows,
        chunks: Box::new(chunks.filter(|c| !matches!(c, Ok(v) if v.is_empty()))),
    })
}

/// The length of the first row of a list column, if it has a row.
fn first_len(array: &dyn Array) -> Option<usize> {
    if array.is_empty() {
        return None;
    }
    Some(match array.data_type() {
        DataType::FixedSizeList(_, d) => *d as usize,
        DataType::List(_) => array.as_list::<i32>().value_length(0) as usize,
        _ => array.as_list::<i64>().value_length(0) as usize,
    })
}

/// The rows of a list column of Float32, each of `dim` values, row-major;
/// `first` numbers the rows in messages.
fn flatten_lists(
    array: &dyn Array,
    dim: usize,
    first: u64,
) -> std::result::Result<Vec<f32>, String> {
    let mut out = Vec::with_capacity(array.len() * dim);
    for i in 0..array.len() {
        let row = first + i as u64;
        if array.is_null(i) {
            return Err(format!("row {row} has a null `{COLUMN}`"));
        }
        let values = match array.data_type() {
            DataType::FixedSizeList(..) => array.as_fixed_size_list().value(i),
            DataType::List(_) => array.as_list::<i32>().value(i),
            _ => array.as_list::<i64>().value(i),
        };
        if values.len() != dim {
            return Err(format!(
                "row {row} has {} values, expected {dim} (ragged rows)",
                values.len()
            ));
        }
        if values.null_count() > 0 {
            return Err(format!("row {row} has a null value"));
        }
        out.extend_from_slice(values.as_primitive::<Float32Type>().values());
    }
    Ok(out)
}

// ---- .jsonl ----

fn open_jsonl(path: &Path) -> Result<VectorFile> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut rows = JsonRows {
        path: path.to_path_buf(),
        lines: BufReader::new(file).lines(),
        line: 0,
    };
    let first = rows
        .next()
        .ok_or_else(|| Error::data(path, "contains no vectors"))??;
    let dim = first.len();
    let step = chunk_rows(dim);
    let mut rows = std::iter::once(Ok(first)).chain(rows).peekable();
    let path_buf = path.to_path_buf();
    let mut row = 0u64;
    let chunks = std::iter::from_fn(move || {
        rows.peek()?;
        let mut chunk = Vec::with_capacity(step * dim);
        for r in rows.by_ref().take(step) {
            let r = match r {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            if r.len() != dim {
                return Some(Err(Error::data(
                    &path_buf,
                    format!(
                        "row {row} has {} values, expected {dim} (ragged rows)",
                        r.len()
                    ),
                )));
            }
            chunk.extend_from_slice(&r);
            row += 1;
        }
        Some(Ok(chunk))
    });
    Ok(VectorFile {
        path: path.to_path_buf(),
        dim,
        rows: None,
        chunks: Box::new(chunks),
    })
}

/// The `embedding` of each non-blank line.
struct JsonRows {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line: usize,
}

impl Iterator for JsonRows {
    type Item = Result<Vec<f32>>;
    fn next(&mut self) -> Option<Self::Item> {
        #[derive(serde::Deserialize)]
        struct Row {
            embedding: Option<Vec<f32>>,
        }
        loop {
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => return Some(Err(Error::io(&self.path, e))),
            };
            self.line += 1;
            if line.trim().is_empty() {
                continue;
            }
            let at = |m: String| Error::data(&self.path, format!("line {}: {m}", self.line));
            return Some(match serde_json::from_str::<Row>(&line) {
                Ok(Row { embedding: Some(v) }) => Ok(v),
                Ok(Row { embedding: None }) => Err(at(format!("no `{COLUMN}` key"))),
                Err(e) => Err(at(format!("`{COLUMN}` unreadable: {e}"))),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 384), }";
        assert_eq!(npy_shape(h), Ok((1000, 384)));
        let f8 = npy_shape("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }");
        assert!(f8.unwrap_err().contains("<f8"));
        let one = npy_shape("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }");
        assert!(one.unwrap_err().contains("2 dimensions"));
        let f = npy_shape("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 2), }");
        assert!(f.unwrap_err().contains("Fortran"));
    }
}
