use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Temporaries this process is writing, so a signal handler can remove them
/// ([`remove_temporaries`]) before the process exits.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A temporary file or folder `.NAME.tmp-PID` beside its destination NAME,
/// renamed into place by [`TempPath::persist`]. Dropped before that, it is
/// removed; a process killed before that leaves it to be removed by the
/// next writer of NAME ([`remove_stale_temporaries`]).
pub struct TempPath {
    path: PathBuf,
    dest: PathBuf,
}

impl TempPath {
    pub fn beside(dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .ok_or_else(|| Error::data(dest, "not a file name"))?
            .to_string_lossy();
        remove_stale_temporaries(dest)?;
        let path = dest.with_file_name(format!(".{name}{TMP}{}", std::process::id()));
        lock_live().push(path.clone());
        Ok(TempPath {
            path,
            dest: dest.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the temporary into place (over an existing file; an existing
    /// folder is removed first).
    pub fn persist(self) -> Result<()> {
        if self.path.is_dir() && self.dest.is_dir() {
            std::fs::remove_dir_all(&self.dest).map_err(|e| Error::io(&self.dest, e))?;
        }
        std::fs::rename(&self.path, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        unregister(&self.path);
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        remove(&self.path);
        unregister(&self.path);
    }
}

const TMP: &str = ".tmp-";

fn lock_live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn unregister(path: &Path) {
    lock_live().retain(|p| p != path);
}

fn remove(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes every temporary this process has open: for a signal handler
/// that is about to exit, so an interrupted run leaves no partial file.
pub fn remove_temporaries() {
    for path in lock_live().drain(..) {
        remove(&path);
    }
}

/// Removes the temporaries of `dest` (`.NAME.tmp-PID`) left by processes
/// that no longer run (killed before they could clean up). Where running
/// processes cannot be listed (no `/proc`), nothing is removed.
pub(crate) fn remove_stale_temporaries(dest: &Path) -> Result<()> {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !Path::new("/proc/self").is_dir() || !dir.is_dir() {
        return Ok(());
    }
    let prefix = format!(".{}{TMP}", name.to_string_lossy());
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove(&entry.path());
        }
    }
    Ok(())
}

/// A file written under a temporary name beside its destination and renamed
/// into place by [`AtomicFile::commit`]. Dropped without a commit, it removes
/// the temporary file and leaves the destination as it was.
pub struct AtomicFile {
    tmp: Option<TempPath>,
    writer: Option<BufWriter<File>>,
}

pub(crate) fn check_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Error::data(
            path,
            format!("folder {} does not exist", parent.display()),
        ));
    }
    Ok(())
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        check_parent(dest)?;
        let tmp = TempPath::beside(dest)?;
        let file = File::create(tmp.path()).map_err(|e| Error::io(tmp.path(), e))?;
        Ok(AtomicFile {
            tmp: Some(tmp),
            writer: Some(BufWriter::new(file)),
        })
    }

    /// Flushes and syncs the file, ready to be renamed into place: a write
    /// error (a full disk) shows here, before any destination changes.
    pub fn finish(mut self) -> Result<Finished> {
        let tmp = self.tmp.take().expect("finish once");
        let writer = self.writer.take().expect("finish once");
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&tmp.dest, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp.dest, e))?;
        Ok(Finished(tmp))
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(self) -> Result<()> {
        self.finish()?.commit()
    }
}

/// A complete temporary file, renamed into place by [`Finished::commit`]
/// (or removed when dropped): several files can be written in full before
/// any of them appears.
pub struct Finished(TempPath);

impl Finished {
    pub fn commit(self) -> Result<()> {
        self.0.persist()
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // The writer closes the file before `tmp` removes it.
        self.writer.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.npy");
        // PIDs above the kernel's maximum (4194304) never run.
        let stale = dir.path().join(".out.npy.tmp-99999999");
        let other = dir.path().join(".other.npy.tmp-99999999");
        for p in [&stale, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"data").unwrap();
        f.commit().unwrap();
        assert!(!stale.exists(), "a dead process's temporary is removed");
        assert!(other.exists(), "another destination's temporary is left");
        assert_eq!(std::fs::read(&dest).unwrap(), b"data");
    }
}
