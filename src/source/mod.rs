//! Text sources: the files sentences come from, read as streams so a corpus
//! larger than memory can be trained on.
//!
//! `.txt` is one text per line; `.jsonl`, `.csv`, `.tsv`, `.parquet` and
//! `.arrow` hold the text in a named column.

mod columnar;
mod delimited;
mod lines;
pub mod vectors;

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
        match extension(path).as_str() {
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

/// The file extension of `path`, lowercase ("" if none).
pub(crate) fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default()
}

/// One row of a text source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A non-empty text, trimmed.
    Text(String),
    /// A blank line, empty cell or null.
    Empty,
    /// A line that is not valid UTF-8 (plain-text files only), decoded
    /// with U+FFFD in place of the bad bytes and trimmed.
    InvalidUtf8(String),
}

impl Item {
    /// The text of this row: the empty text for an empty row, the
    /// U+FFFD-decoded text for a line that is not UTF-8.
    fn into_row_text(self) -> String {
        match self {
            Item::Text(t) | Item::InvalidUtf8(t) => t,
            Item::Empty => String::new(),
        }
    }

    fn from_text(text: Option<&str>) -> Item {
        match text.map(str::trim) {
            Some(t) if !t.is_empty() => Item::Text(t.to_string()),
            _ => Item::Empty,
        }
    }
}

/// A stream of rows; errors carry the file and position.
pub type TextStream = Box<dyn Iterator<Item = Result<Item>> + Send>;

/// Opens `path` as a stream of rows; `column` names the text column of
/// tabular formats (ignored for `.txt`). Format and column are checked here,
/// before any row is read.
pub fn open(path: &Path, column: &str) -> Result<TextStream> {
    if !path.exists() {
        return Err(Error::data(path, "no such file"));
    }
    if path.is_dir() {
        return Err(Error::data(path, "is a folder, expected a file"));
    }
    match TextFormat::from_path(path)? {
        TextFormat::Txt => lines::open(path),
        TextFormat::Jsonl => delimited::open_jsonl(path, column),
        TextFormat::Csv => delimited::open_csv(path, column, b','),
        TextFormat::Tsv => delimited::open_csv(path, column, b'\t'),
        TextFormat::Parquet => columnar::open_parquet(path, column),
        TextFormat::Arrow => columnar::open_arrow(path, column),
    }
}

/// Texts read from a file, in file order.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    pub texts: Vec<String>,
    /// Lines that were not valid UTF-8 (skipped by [`read_texts`], decoded
    /// with U+FFFD by [`read_rows`]).
    pub invalid_utf8: usize,
    /// Rows whose text was empty or null (skipped by [`read_texts`], the
    /// empty text in [`read_rows`]).
    pub empty: usize,
}

/// Reads every non-empty, valid text of `path` into memory (for probes,
/// where a blank row means nothing). An input with no text is an error.
pub fn read_texts(path: &Path, column: &str) -> Result<Texts> {
    read(path, column, false)
}

/// Reads one text per row of `path`, so that output row `i` is input row
/// `i`: an empty or null row is the empty text, a line that is not UTF-8
/// is decoded with U+FFFD. An input with no text at all is an error.
pub fn read_rows(path: &Path, column: &str) -> Result<Texts> {
    read(path, column, true)
}

fn read(path: &Path, column: &str, every_row: bool) -> Result<Texts> {
    let mut out = Texts::default();
    let mut counts = RowCount::default();
    for item in open(path, column)? {
        let item = item?;
        counts.count(&item);
        if every_row || matches!(item, Item::Text(_)) {
            out.texts.push(item.into_row_text());
        }
    }
    counts.check(path)?;
    out.invalid_utf8 = counts.invalid_utf8;
    out.empty = counts.empty;
    Ok(out)
}

/// What a pass over a source found, row by row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCount {
    pub rows: u64,
    /// Rows whose text was empty or null.
    pub empty: usize,
    /// Lines that were not valid UTF-8.
    pub invalid_utf8: usize,
}

impl RowCount {
    fn count(&mut self, item: &Item) {
        self.rows += 1;
        match item {
            Item::Text(_) => {}
            Item::Empty => self.empty += 1,
            Item::InvalidUtf8(_) => self.invalid_utf8 += 1,
        }
    }

    /// An input with no (valid) text at all is an error.
    fn check(&self, path: &Path) -> Result<()> {
        if self.rows == (self.empty + self.invalid_utf8) as u64 {
            return Err(Error::data(path, "contains no text"));
        }
        Ok(())
    }
}

/// Reads `path` once without keeping its texts: how many rows it has, how
/// many are empty or not UTF-8. Every row is parsed, so a malformed input
/// fails here, before any work. An input with no text is an error.
pub fn count_rows(path: &Path, column: &str) -> Result<RowCount> {
    let mut counts = RowCount::default();
    for item in open(path, column)? {
        counts.count(&item?);
    }
    counts.check(path)?;
    Ok(counts)
}

/// The rows of `path` as texts, one per row (as [`read_rows`] gives them),
/// streamed.
pub fn rows(path: &Path, column: &str) -> Result<impl Iterator<Item = Result<String>>> {
    Ok(open(path, column)?.map(|item| Ok(item?.into_row_text())))
}

/// The UTF-8 byte-order mark some editors put at the start of a file.
pub(crate) const BOM: char = '\u{feff}';

/// A whole text file (configs, STS pairs), without a byte-order mark.
pub(crate) fn read_to_string(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(match text.strip_prefix(BOM) {
        Some(rest) => rest.to_string(),
        None => text,
    })
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
