//! The work folder of a stopped-or-running chunked output: `.NAME.partial/`
//! beside the output NAME holds the settings the run began with and one
//! file of vectors per completed chunk. A run killed at any point leaves
//! it to be continued (`--resume`); the finished output replaces it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::inference::Embeddings;

use super::atomic::AtomicFile;
use super::lock;
use super::resume::{Settings, check_settings};

const SETTINGS: &str = "settings.json";

/// A locked `.NAME.partial/` folder.
pub struct PartialRun {
    dir: PathBuf,
    _lock: std::fs::File,
    /// Made by this run and holding no chunk yet: removed if the run fails.
    fresh: bool,
}

/// The work folder of output `out`.
pub fn dir_for(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.partial"))
}

impl PartialRun {
    /// Opens the work folder of `out` for a run with `settings`. A folder
    /// left by a stopped run is continued with `resume` (settings must
    /// match) and refused without it, so no finished chunk is lost.
    pub fn open(out: &Path, settings: &Settings, resume: bool) -> Result<Self> {
        let dir = dir_for(out);
        if dir.is_dir() {
            lock::check_free(&dir, out)?;
            if count_chunks(&dir) == 0 {
                // Stopped before finishing a chunk: nothing to continue.
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                return Self::open(out, settings, resume);
            }
            let run = PartialRun {
                _lock: lock::lock(&dir, out)?,
                dir,
                fresh: false,
            };
            run.check_resumable(out, settings, resume)?;
            return Ok(run);
        }
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let run = PartialRun {
            _lock: lock::lock(&dir, out)?,
            dir,
            fresh: true,
        };
        run.save_settings(settings)?;
        Ok(run)
    }

    fn check_resumable(&self, out: &Path, settings: &Settings, resume: bool) -> Result<()> {
        let restart = format!("remove {} to start again", self.dir.display());
        if !resume {
            return Err(Error::data(
                out,
                format!(
                    "a stopped run left {} finished chunk(s) in {}; pass --resume to continue it, or remove that folder to start again",
                    self.chunks_done(),
                    self.dir.display()
                ),
            ));
        }
        let path = self.dir.join(SETTINGS);
        let saved: BTreeMap<String, String> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        check_settings(&saved, settings, &restart)
    }

    fn save_settings(&self, settings: &Settings) -> Result<()> {
        let map: BTreeMap<&str, &str> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let path = self.dir.join(SETTINGS);
        let mut file = AtomicFile::create(&path)?;
        serde_json::to_writer_pretty(&mut file, &map).map_err(|e| Error::io(&path, e.into()))?;
        file.commit()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn chunk_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("chunk-{index:08}.f32"))
    }

    /// How many chunk files the folder holds.
    pub fn chunks_done(&self) -> usize {
        count_chunks(&self.dir)
    }

    /// Whether chunk `index` of `rows` vectors of `dim` is complete.
    pub fn has_chunk(&self, index: usize, rows: usize, dim: usize) -> bool {
        std::fs::metadata(self.chunk_path(index)).is_ok_and(|m| m.len() == (rows * dim * 4) as u64)
    }

    /// Saves chunk `index` (written under a temporary name, then renamed:
    /// a chunk file is complete or absent).
    pub fn save_chunk(&mut self, index: usize, embeddings: &Embeddings) -> Result<()> {
        let path = self.chunk_path(index);
        let mut file = AtomicFile::create(&path)?;
        let bytes: Vec<u8> = embeddings
            .data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        file.write_all(&bytes).map_err(|e| Error::io(&path, e))?;
        file.commit()?;
        self.fresh = false;
        Ok(())
    }

    /// Reads chunk `index` back.
    pub fn load_chunk(&self, index: usize, rows: usize, dim: usize) -> Result<Embeddings> {
        let path = self.chunk_path(index);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if bytes.len() != rows * dim * 4 {
            return Err(Error::data(
                &path,
                format!(
                    "holds {} bytes, expected {} rows of {dim}",
                    bytes.len(),
                    rows
                ),
            ));
        }
        let data = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Embeddings { dim, data })
    }

    /// The output is complete: the folder goes.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}

fn count_chunks(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("chunk-"))
                .count()
        })
        .unwrap_or(0)
}

impl Drop for PartialRun {
    fn drop(&mut self) {
        if self.fresh {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
