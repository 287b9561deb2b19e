//! Checkpoints: weights, AdamW moments and the loop's state (step, data
//! position, RNG), written to a temporary folder and renamed into place so
//! a crash never leaves a half-written checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::TempPath;
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
    /// Settings that must match for a resume to be exact, by option name.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
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
    let dest = root.join(format!("step-{:08}", state.step));
    // Dropped on any error below: a failed checkpoint leaves nothing.
    let tmp = TempPath::beside(&dest)?;
    let dir = tmp.path();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_safetensors(&dir.join(MODEL), weights)?;
    save_optimizer(&dir.join(OPTIMIZER))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(dir.join(STATE), json).map_err(|e| Error::io(dir.join(STATE), e))?;
    tmp.persist()?;
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

/// Removes what interrupted checkpoints left (temporaries start with `.`);
/// only for the process that holds the output folder's lock.
pub fn remove_temporaries(out: &Path) {
    let root = checkpoints_dir(out);
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The best weights so far (by STS Spearman) live here.
pub fn best_model_path(out: &Path) -> PathBuf {
    checkpoints_dir(out).join("best").join(MODEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_checkpoint_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = TrainState {
            step: 3,
            epoch: 0,
            consumed: 0,
            dropout_rng: Rng::new(1),
            best_spearman: None,
            best_step: None,
            settings: BTreeMap::new(),
        };
        let weights = BTreeMap::from([(
            "w".to_string(),
            Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        )]);
        let failed = save(dir.path(), &state, &weights, |_| {
            Err(Error::Invalid("disk full".into()))
        });
        assert!(failed.is_err());
        let left: Vec<_> = std::fs::read_dir(checkpoints_dir(dir.path()))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        save(dir.path(), &state, &weights, |_| Ok(())).unwrap();
        assert_eq!(latest(dir.path()).unwrap().unwrap().state, state);
    }
}
