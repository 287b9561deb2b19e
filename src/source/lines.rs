use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::{BOM, Item, TextStream};

/// One text per line (a byte-order mark at the start is dropped); lines
/// that are not UTF-8 come back as [`Item::InvalidUtf8`] so the caller can
/// skip or keep them, and count them.
pub(super) fn open(path: &Path) -> Result<TextStream> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let path = path.to_path_buf();
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut first = true;
    Ok(Box::new(std::iter::from_fn(move || {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                let bytes = match std::mem::take(&mut first) {
                    true => buf.strip_prefix(BOM.to_string().as_bytes()).unwrap_or(&buf),
                    false => &buf[..],
                };
                Some(Ok(match std::str::from_utf8(bytes) {
                    Ok(line) => Item::from_text(Some(line)),
                    Err(_) => Item::InvalidUtf8(String::from_utf8_lossy(bytes).trim().to_string()),
                }))
            }
            Err(e) => Some(Err(Error::io(&path, e))),
        }
    })))
}
