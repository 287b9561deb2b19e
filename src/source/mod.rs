//! Text sources: the files sentences come from.
//!
//! `.txt` is one text per line; `.jsonl`, `.csv`, `.tsv`, `.parquet` and
//! `.arrow` hold the text in a named column.

mod columnar;
mod delimited;
mod lines;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The input formats embedtune reads, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    Txt,
    Jsonl,
    Csv,
    Tsv,
    Parquet,
    Arrow,
}

impl TextFormat {
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "txt" | "text" => Ok(TextFormat::Txt),
            "jsonl" | "ndjson" => Ok(TextFormat::Jsonl),
            "csv" => Ok(TextFormat::Csv),
            "tsv" => Ok(TextFormat::Tsv),
            "parquet" => Ok(TextFormat::Parquet),
            "arrow" | "ipc" | "feather" => Ok(TextFormat::Arrow),
            _ => Err(Error::data(
                path,
                "unknown input format (expected .txt, .jsonl, .csv, .tsv, .parquet or .arrow)",
            )),
        }
    }
}

/// Texts read from a file, in file order.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    pub texts: Vec<String>,
    /// Lines skipped because they were not valid UTF-8.
    pub skipped_invalid_utf8: usize,
    /// Rows skipped because the text was empty or null.
    pub skipped_empty: usize,
}

/// Reads every non-empty text of `path`; `column` names the text column of
/// tabular formats (ignored for `.txt`). An input with no text is an error.
pub fn read_texts(path: &Path, column: &str) -> Result<Texts> {
    if !path.exists() {
        return Err(Error::data(path, "no such file"));
    }
    if path.is_dir() {
        return Err(Error::data(path, "is a folder, expected a file"));
    }
    let texts = match TextFormat::from_path(path)? {
        TextFormat::Txt => lines::read(path)?,
        TextFormat::Jsonl => delimited::read_jsonl(path, column)?,
        TextFormat::Csv => delimited::read_csv(path, column, b',')?,
        TextFormat::Tsv => delimited::read_csv(path, column, b'\t')?,
        TextFormat::Parquet => columnar::read_parquet(path, column)?,
        TextFormat::Arrow => columnar::read_arrow(path, column)?,
    };
    if texts.texts.is_empty() {
        return Err(Error::data(path, "contains no text"));
    }
    Ok(texts)
}

/// Keeps non-empty texts, counting the rest.
fn push_text(out: &mut Texts, text: Option<&str>) {
    match text.map(str::trim) {
        Some(t) if !t.is_empty() => out.texts.push(t.to_string()),
        _ => out.skipped_empty += 1,
    }
}

fn missing_column(path: &Path, column: &str, available: &[String]) -> Error {
    Error::data(
        PathBuf::from(path),
        format!(
            "no column `{column}` (columns: {}); choose one with --column",
            available.join(", ")
        ),
    )
}
