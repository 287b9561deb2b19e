use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::{Item, TextStream, missing_column};

/// CSV or TSV with a header row.
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
    Ok(Box::new(reader.into_records().map(move |record| {
        let record = record.map_err(|e| Error::data(&path, e.to_string()))?;
        Ok(Item::from_text(record.get(idx)))
    })))
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
                Ok(l) if l.trim().is_empty() => return None,
                Ok(l) => l,
                Err(e) => return Some(Err(bad(e.to_string()))),
            };
            let value: serde_json::Value = match serde_json::from_str(&line) {
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
