//! Embedding writers: `.jsonl`, `.npy`, `.parquet`, `.arrow`.
//!
//! Every writer goes through [`AtomicFile`], so OUT is either the complete
//! result or untouched: never half-written.

mod atomic;
mod columnar;
pub(crate) mod lock;
pub mod model_folder;
mod npy;
pub mod partial;
pub(crate) mod resume;
mod writer;

use std::path::{Path, PathBuf};

pub(crate) use atomic::check_parent;
pub use atomic::{AtomicFile, Finished, TempPath, remove_temporaries};
pub use writer::EmbeddingWriter;

use crate::error::{Error, Result};
use crate::inference::Embeddings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Jsonl,
    Npy,
    Parquet,
    Arrow,
}

impl OutputFormat {
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "jsonl" | "ndjson" => Ok(OutputFormat::Jsonl),
            "npy" => Ok(OutputFormat::Npy),
            "parquet" => Ok(OutputFormat::Parquet),
            "arrow" | "ipc" | "feather" => Ok(OutputFormat::Arrow),
            _ => Err(Error::data(
                path,
                "unknown output format (expected .jsonl, .npy, .parquet or .arrow)",
            )),
        }
    }
}

/// Checks, before any work, that `path` has a known format and a writable
/// parent folder.
pub fn check_destination(path: &Path) -> Result<OutputFormat> {
    let format = OutputFormat::from_path(path)?;
    atomic::check_parent(path)?;
    if path.is_dir() {
        return Err(Error::data(path, "is a folder, expected a file name"));
    }
    Ok(format)
}

/// `path` made absolute with symbolic links resolved, also when it, or the
/// end of it, does not exist yet.
pub fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = abs.as_path();
    let mut tail = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return tail.iter().rev().fold(real, |p, t| p.join(t));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name);
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses an output `out` that is, contains or lies inside the input
/// `input` (given as `flag`): writing there would destroy the input or mix
/// the output into it.
pub fn check_not_input(out: &Path, flag: &str, input: &Path) -> Result<()> {
    let (o, i) = (resolved(out), resolved(input));
    let relation = if o == i {
        "is"
    } else if o.starts_with(&i) {
        "lies inside"
    } else if i.starts_with(&o) {
        "contains"
    } else {
        return Ok(());
    };
    Err(Error::data(
        out,
        format!(
            "{relation} the {flag} input {}; writing there would overwrite or mix into it (choose another output)",
            input.display()
        ),
    ))
}

/// Writes `texts` and their embeddings (same order) to `path` at once:
/// an [`EmbeddingWriter`] with one chunk.
pub fn write_embeddings(path: &Path, texts: &[String], embeddings: &Embeddings) -> Result<()> {
    let mut writer = EmbeddingWriter::create(path, texts.len() as u64, embeddings.dim)?;
    writer.write(texts, embeddings)?;
    writer.finish()?.commit()
}
