use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::{Item, TextStream};

/// One text per line; lines that are not UTF-8 come back as
/// [`Item::InvalidUtf8`] so the caller can skip and count them.
pub(super) fn open(path: &Path) -> Result<TextStream> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let path = path.to_path_buf();
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    Ok(Box::new(std::iter::from_fn(move || {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => Some(Ok(match std::str::from_utf8(&buf) {
                Ok(line) => Item::from_text(Some(line)),
                Err(_) => Item::InvalidUtf8,
            })),
            Err(e) => Some(Err(Error::io(&path, e))),
        }
    })))
}
