//! sentence-transformers' `Dense` module: a linear map (and an activation)
//! applied to the pooled sentence vector, before `Normalize`.
//!
//! On disk (`2_Dense/` beside `1_Pooling/`): `config.json` with
//! `in_features`, `out_features`, `bias` and `activation_function` (a Python
//! class path), and `model.safetensors` (older versions:
//! `pytorch_model.bin`) with `linear.weight` `(out, in)` and `linear.bias`.
//! `embedtune whiten` writes one; every command applies one on load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::model_folder::{save_safetensors, write_json};

/// The activation of sentence-transformers' identity Dense layer.
pub const IDENTITY: &str = "torch.nn.modules.linear.Identity";
const TANH: &str = "torch.nn.modules.activation.Tanh";
/// The folder name `whiten` gives the module (after `0` and `1_Pooling`).
pub const DIR: &str = "2_Dense";
pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_BIN: &str = "pytorch_model.bin";

/// Where a model's Dense module is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    Identity,
    Tanh,
}

#[derive(Serialize, Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default = "tanh_name")]
    activation_function: String,
    /// sentence-transformers ≥ 5 (absent: the defaults below).
    #[serde(default, skip_serializing)]
    use_residual: bool,
    #[serde(default, skip_serializing)]
    module_input_name: Option<String>,
    #[serde(default, skip_serializing)]
    module_output_name: Option<String>,
}

/// The features a Dense module must read and write for embedtune to apply
/// it to the pooled vector.
const SENTENCE_EMBEDDING: &str = "sentence_embedding";

fn yes() -> bool {
    true
}

fn tanh_name() -> String {
    TANH.into()
}

/// `y = act(x Wᵀ + b)` on `(n, in)` rows; frozen (never trained).
#[derive(Debug, Clone)]
pub struct Dense {
    /// `(out, in)`, as `torch.nn.Linear` stores it.
    weight: Tensor,
    /// `(out)`.
    bias: Option<Tensor>,
    activation: Activation,
}

impl Dense {
    /// An identity-activation layer from a weight `(out, in)` and a bias.
    pub fn linear(weight: Tensor, bias: Tensor) -> Result<Self> {
        let (out, _) = weight.dims2()?;
        if bias.dims() != [out] {
            return Err(Error::Invalid(format!(
                "a Dense bias of shape {:?} does not fit a weight of shape {:?}",
                bias.dims(),
                weight.dims()
            )));
        }
        Ok(Dense {
            weight,
            bias: Some(bias),
            activation: Activation::Identity,
        })
    }

    /// Reads a Dense module onto `device` as `dtype`.
    pub fn load(files: &DenseFiles, dtype: DType, device: &Device) -> Result<Self> {
        let text =
            std::fs::read_to_string(&files.config).map_err(|e| Error::io(&files.config, e))?;
        let bad = |message: String| Error::Config {
            path: files.config.clone(),
            message,
        };
        let cfg: DenseConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let activation = match cfg.activation_function.as_str() {
            IDENTITY => Activation::Identity,
            TANH => Activation::Tanh,
            other => {
                return Err(bad(format!(
                    "Dense activation `{other}` is not supported (supported: Identity, Tanh)"
                )));
            }
        };
        if cfg.use_residual {
            return Err(bad(
                "Dense modules with `use_residual` are not supported".into()
            ));
        }
        for name in [&cfg.module_input_name, &cfg.module_output_name]
            .into_iter()
            .flatten()
        {
            if name != SENTENCE_EMBEDDING {
                return Err(bad(format!(
                    "a Dense module on `{name}` is not supported (only on `{SENTENCE_EMBEDDING}`)"
                )));
            }
        }
        let mut tensors = read_tensors(&files.weights, device)?;
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors.remove(name).ok_or_else(|| {
                Error::Weight(format!("{} has no `{name}`", files.weights.display()))
            })?;
            if t.dims() != shape {
                return Err(Error::Weight(format!(
                    "{}: `{name}` has shape {:?}, config.json says {shape:?}",
                    files.weights.display(),
                    t.dims()
                )));
            }
            Ok(t.to_dtype(dtype)?)
        };
        let weight = take("linear.weight", &[cfg.out_features, cfg.in_features])?;
        let bias = cfg
            .bias
            .then(|| take("linear.bias", &[cfg.out_features]))
            .transpose()?;
        Ok(Dense {
            weight,
            bias,
            activation,
        })
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `act(x Wᵀ + b)` for `x` of shape `(n, in)`; differentiable in `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.to_dtype(x.dtype())?;
        let mut y = x.matmul(&w.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.to_dtype(x.dtype())?)?;
        }
        Ok(match self.activation {
            Activation::Identity => y,
            Activation::Tanh => y.tanh()?,
        })
    }

    /// Writes the module into `dir` (`config.json`, `model.safetensors`), as
    /// sentence-transformers saves it.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let cfg = DenseConfig {
            in_features: self.in_features(),
            out_features: self.out_features(),
            bias: self.bias.is_some(),
            activation_function: match self.activation {
                Activation::Identity => IDENTITY,
                Activation::Tanh => TANH,
            }
            .into(),
            use_residual: false,
            module_input_name: None,
            module_output_name: None,
        };
        let value = serde_json::to_value(&cfg).map_err(|e| Error::Invalid(e.to_string()))?;
        write_json(&dir.join(CONFIG), &value)?;
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "linear.weight".to_string(),
            self.weight.to_dtype(DType::F32)?.contiguous()?,
        );
        if let Some(b) = &self.bias {
            tensors.insert("linear.bias".to_string(), b.to_dtype(DType::F32)?);
        }
        save_safetensors(&dir.join(WEIGHTS), &tensors)
    }
}

fn read_tensors(path: &Path, device: &Device) -> Result<std::collections::HashMap<String, Tensor>> {
    let unreadable = |e: candle_core::Error| Error::Weight(format!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "bin") {
        let all = candle_core::pickle::read_all(path).map_err(unreadable)?;
        all.into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect()
    } else {
        candle_core::safetensors::load(path, device).map_err(unreadable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_is_x_wt_plus_b_and_survives_a_save() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0, 0.0], [0.0, -1.0, 3.0]], &dev).unwrap();
        let b = Tensor::new(&[0.5f32, -0.5], &dev).unwrap();
        let dense = Dense::linear(w, b).unwrap();
        let x = Tensor::new(&[[1f32, 1.0, 1.0]], &dev).unwrap();
        let y: Vec<Vec<f32>> = dense.forward(&x).unwrap().to_vec2().unwrap();
        assert_eq!(y, vec![vec![3.5, 1.5]]);

        let dir = tempfile::tempdir().unwrap();
        dense.save(dir.path()).unwrap();
        let files = DenseFiles {
            config: dir.path().join(CONFIG),
            weights: dir.path().join(WEIGHTS),
        };
        let back = Dense::load(&files, DType::F32, &dev).unwrap();
        assert_eq!((back.in_features(), back.out_features()), (3, 2));
        let y2: Vec<Vec<f32>> = back.forward(&x).unwrap().to_vec2().unwrap();
        assert_eq!(y, y2);
    }

    #[test]
    fn bias_must_fit_the_weight() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
        assert!(Dense::linear(w, b).is_err());
    }
}
