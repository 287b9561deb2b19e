//! Checkpoints: weights, AdamW moments and the loop's state (step, data
//! position, RNG), written to a temporary folder and renamed into place so
//! a crash never leaves a half-written checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::model_folder::save_safetensors;
use crate::rng::Rng;

/// Everything besides tensors needed to continue a run exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Epoch of the next batch and sentences of it already consumed.
    pub epoch: u64,
    pub consumed: usize,
    pub dropout_rng: Rng,
    pub best_spearman: Option<f64>,
    pub best_step: Option<usize>,
    /// Settings that must match for a resume to be exact.
    pub fingerprint: String,
}

const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Writes checkpoint `state.step` and removes older ones.
pub fn save(
    out: &Path,
    state: &TrainState,
    weights: &BTreeMap<String, Tensor>,
    save_optimizer: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    save_safetensors(&tmp.join(MODEL), weights)?;
    save_optimizer(&tmp.join(OPTIMIZER))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(tmp.join(STATE), json).map_err(|e| Error::io(tmp.join(STATE), e))?;
    let dest = root.join(&name);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    // Keep only the newest.
    for old in list(out)? {
        if old != dest {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(dest)
}

/// Complete checkpoints, oldest first.
fn list(out: &Path) -> Result<Vec<PathBuf>> {
    let root = checkpoints_dir(out);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                && p.join(STATE).is_file()
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// A checkpoint read back.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: TrainState,
}

impl Loaded {
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL)
    }
    pub fn optimizer_path(&self) -> PathBuf {
        self.dir.join(OPTIMIZER)
    }
}

/// The newest checkpoint under `out`, if any.
pub fn latest(out: &Path) -> Result<Option<Loaded>> {
    let Some(dir) = list(out)?.pop() else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(dir.join(STATE)).map_err(|e| Error::io(dir.join(STATE), e))?;
    let state = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: dir.join(STATE),
        message: e.to_string(),
    })?;
    Ok(Some(Loaded { dir, state }))
}

/// The best weights so far (by STS Spearman) live here.
pub fn best_model_path(out: &Path) -> PathBuf {
    checkpoints_dir(out).join("best").join(MODEL)
}
