use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::error::{Error, Result};
use crate::source::{Texts, push_text};

/// One text per line; blank lines and lines that are not UTF-8 are skipped
/// (the latter counted, so the caller can report them).
pub(super) fn read(path: &Path) -> Result<Texts> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut out = Texts::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        match std::str::from_utf8(&buf) {
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => push_text(&mut out, Some(line)),
            Err(_) => out.skipped_invalid_utf8 += 1,
        }
    }
    Ok(out)
}
