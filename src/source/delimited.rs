use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::{Texts, missing_column, push_text};

/// CSV or TSV with a header row.
pub(super) fn read_csv(path: &Path, column: &str, delimiter: u8) -> Result<Texts> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
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
    let mut out = Texts::default();
    for record in reader.records() {
        let record = record.map_err(|e| Error::data(path, e.to_string()))?;
        push_text(&mut out, record.get(idx));
    }
    Ok(out)
}

/// One JSON object per line, the text under `column`.
pub(super) fn read_jsonl(path: &Path, column: &str) -> Result<Texts> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Texts::default();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::data(path, format!("line {}: {e}", n + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| Error::data(path, format!("line {}: invalid JSON: {e}", n + 1)))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::data(path, format!("line {}: not a JSON object", n + 1)))?;
        match obj.get(column) {
            Some(serde_json::Value::String(s)) => push_text(&mut out, Some(s)),
            Some(serde_json::Value::Null) => push_text(&mut out, None),
            Some(_) => {
                return Err(Error::data(
                    path,
                    format!("line {}: `{column}` is not a string", n + 1),
                ));
            }
            None if out.texts.is_empty() && out.skipped_empty == 0 => {
                let keys: Vec<String> = obj.keys().cloned().collect();
                return Err(missing_column(path, column, &keys));
            }
            None => {
                return Err(Error::data(
                    path,
                    format!("line {}: no field `{column}`", n + 1),
                ));
            }
        }
    }
    Ok(out)
}
