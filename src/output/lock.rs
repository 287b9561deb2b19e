//! Advisory locks (`flock`) on folders a run writes into, so a second run
//! on the same output is refused instead of mixing into it. A process that
//! dies releases its lock.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// The lock file inside a locked folder.
pub(crate) const LOCK: &str = ".embedtune.lock";

/// Says `shown_as` is busy when another process holds the lock of `dir`.
pub(crate) fn check_free(dir: &Path, shown_as: &Path) -> Result<()> {
    match File::open(dir.join(LOCK)) {
        Ok(existing) => try_lock(&existing, dir, shown_as),
        Err(_) => Ok(()),
    }
}

/// Takes the lock of the existing folder `dir` for as long as the returned
/// file stays open; another holder makes it [`Error::Busy`] for `shown_as`.
pub(crate) fn lock(dir: &Path, shown_as: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    try_lock(&file, dir, shown_as)?;
    Ok(file)
}

fn try_lock(file: &File, dir: &Path, shown_as: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy {
            path: shown_as.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(dir.join(LOCK), e)),
    }
}
