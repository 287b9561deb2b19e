use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::{BOM, Item, TextStream, missing_column};

/// CSV or TSV with a header row (the csv reader drops a byte-order mark).
/// A quote that is never closed would swallow the rest of the file into one
/// field: that is reported at the end instead of read as text.
pub(super) fn open_csv(path: &Path, column: &str, delimiter: u8) -> Result<TextStream> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_path(path)
        .map_err(|e| Error::data(path, e.to_string()))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| Error::data(path, e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let idx = headers
        .iter()
        .position(|h| h == column)
        .ok_or_else(|| missing_column(path, column, &headers))?;
    let path = path.to_path_buf();
    let mut records = reader.into_records();
    // The start of the last record whose fields span lines.
    let mut multiline: Option<csv::Position> = None;
    let mut done = false;
    Ok(Box::new(std::iter::from_fn(move || {
        if done {
            return None;
        }
        match records.next() {
            Some(record) => Some(record.map_err(|e| Error::data(&path, e.to_string())).map(
                |record| {
                    let spans_lines = record.iter().any(|f| f.contains(['\n', '\r']));
                    multiline = spans_lines.then(|| record.position().cloned()).flatten();
                    Item::from_text(record.get(idx))
                },
            )),
            None => {
                done = true;
                let start = multiline.take()?;
                match unclosed_quote(&path, start.byte()) {
                    Ok(false) => None,
                    Ok(true) => Some(Err(Error::data(
                        &path,
                        format!(
                            "line {}: a quoted field is never closed, so it would swallow the rest of the file (close the quote or escape it as \"\")",
                            start.line()
                        ),
                    ))),
                    Err(e) => Some(Err(e)),
                }
            }
        }
    })))
}

/// Whether the record starting at byte `start` and running to the end of
/// the file has an odd number of quotes: an opening quote never closed
/// (escaped quotes come in pairs).
fn unclosed_quote(path: &Path, start: u64) -> Result<bool> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    file.seek(SeekFrom::Start(start))
        .map_err(|e| Error::io(path, e))?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)
        .map_err(|e| Error::io(path, e))?;
    Ok(rest.iter().filter(|&&b| b == b'"').count() % 2 == 1)
}

/// One JSON object per line, the text under `column`. The first object must
/// have the column, so a wrong `--column` fails at once.
pub(super) fn open_jsonl(path: &Path, column: &str) -> Result<TextStream> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let owned = path.to_path_buf();
    let column = column.to_string();
    let mut seen_first = false;
    let mut rows = BufReader::new(file)
        .lines()
        .enumerate()
        .filter_map(move |(n, line)| {
            let path = &owned;
            let bad = |m: String| Error::data(path, format!("line {}: {m}", n + 1));
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(bad(e.to_string()))),
            };
            let line = match n {
                0 => line.strip_prefix(BOM).unwrap_or(&line),
                _ => &line,
            };
            if line.trim().is_empty() {
                return None;
            }
            let value: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => return Some(Err(bad(format!("invalid JSON: {e}")))),
            };
            let Some(obj) = value.as_object() else {
                return Some(Err(bad("not a JSON object".into())));
            };
            let first = !seen_first;
            seen_first = true;
            Some(match obj.get(&column) {
                Some(serde_json::Value::String(s)) => Ok(Item::from_text(Some(s))),
                Some(serde_json::Value::Null) => Ok(Item::Empty),
                Some(_) => Err(bad(format!("`{column}` is not a string"))),
                None if first => {
                    let keys: Vec<String> = obj.keys().cloned().collect();
                    Err(missing_column(path, &column, &keys))
                }
                None => Err(bad(format!("no field `{column}`"))),
            })
        });
    // Read the first row now so a wrong column is reported by `open`.
    let first = rows.next();
    if let Some(Err(e)) = first {
        return Err(e);
    }
    Ok(Box::new(first.into_iter().chain(rows)))
}
