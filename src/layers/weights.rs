//! Named weights of a checkpoint, looked up with checked shapes.
//!
//! Checkpoints name the same tensor in several ways (`bert.` prefix or not,
//! legacy `LayerNorm.gamma/beta`); [`Weights`] keeps one canonical name per
//! tensor and remembers the original, so a fine-tuned model is saved under
//! the names its base model used.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::error::{Error, Result};
use crate::models::files::WeightFiles;

/// All tensors of a checkpoint under canonical names.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// canonical name → name in the checkpoint file.
    original_names: HashMap<String, String>,
    /// Set for a trainable load: every weight the model takes becomes a
    /// variable here, so an optimizer can update it.
    varmap: Option<VarMap>,
    /// Mixed precision: the compute copies (in `compute_dtype`) of the
    /// variables in `varmap`, which keep the storage dtype (f32) as master
    /// weights. Empty when the two dtypes are the same.
    copies: Mutex<HashMap<String, Var>>,
    /// What the tensors are stored (and, for a trainable load, updated) in.
    dtype: DType,
    /// What the model computes in (what [`WeightsView::get`] hands out).
    compute_dtype: DType,
    device: Device,
}

impl Weights {
    /// Reads every tensor of `files` onto `device` as `dtype`. `strip_prefixes`
    /// are model prefixes (e.g. `bert.`) removed from the names.
    pub fn load(
        files: &WeightFiles,
        strip_prefixes: &[&str],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut raw: Vec<(String, Tensor)> = Vec::new();
        match files {
            WeightFiles::SafeTensors(paths) => {
                // Memory-mapped: each tensor is copied once, from the page
                // cache to its own buffer, with no whole-file read first.
                for path in paths {
                    // SAFETY: the mapping lives only while the tensors are
                    // copied out of it; the file is not written meanwhile
                    // (the same contract as any reader of the file).
                    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                        .map_err(|e| unreadable(path, e))?;
                    for (name, _) in st.tensors() {
                        let t = st.load(&name, device).map_err(|e| unreadable(path, e))?;
                        raw.push((name, t));
                    }
                }
            }
            WeightFiles::PytorchBin(path) => {
                let tensors =
                    candle_core::pickle::read_all(path).map_err(|e| unreadable(path, e))?;
                for (name, t) in tensors {
                    raw.push((name, t.to_device(device)?));
                }
            }
        }
        Self::from_tensors(raw, strip_prefixes, dtype, device)
    }

    /// Builds from named tensors (tests build tiny random models this way).
    pub fn from_tensors(
        named: impl IntoIterator<Item = (String, Tensor)>,
        strip_prefixes: &[&str],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut tensors = HashMap::new();
        let mut original_names = HashMap::new();
        for (name, tensor) in named {
            let canonical = canonical_name(&name, strip_prefixes);
            let tensor = if tensor.dtype().is_float() {
                tensor.to_dtype(dtype)?
            } else {
                tensor
            };
            original_names.insert(canonical.clone(), name);
            tensors.insert(canonical, tensor.to_device(device)?);
        }
        Ok(Weights {
            tensors,
            original_names,
            varmap: None,
            copies: Mutex::default(),
            dtype,
            compute_dtype: dtype,
            device: device.clone(),
        })
    }

    /// Makes every weight handed out from now on a trainable variable.
    pub fn into_trainable(mut self) -> Self {
        self.varmap = Some(VarMap::new());
        self
    }

    /// Hands weights out in `dtype` while keeping them stored in their own.
    /// For a trainable load this is mixed precision: the variables stay
    /// master weights in the storage dtype (what the optimizer updates and
    /// checkpoints save), and the model computes with copies in `dtype`
    /// ([`Weights::compute_copies`]).
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute_dtype = dtype;
        self
    }

    /// The variables created so far (those the model took), if trainable.
    pub fn varmap(&self) -> Option<&VarMap> {
        self.varmap.as_ref()
    }

    /// The trainable variables by canonical name (empty for an immutable
    /// load).
    pub fn vars(&self) -> std::collections::HashMap<String, Var> {
        self.varmap
            .as_ref()
            .map(|v| v.data().lock().expect("varmap lock").clone())
            .unwrap_or_default()
    }

    /// The mixed-precision copies the model computes with, by canonical
    /// name (empty unless the compute dtype differs from the storage dtype
    /// of a trainable load). Their gradients are the master variables'.
    pub fn compute_copies(&self) -> HashMap<String, Var> {
        self.copies.lock().expect("copies lock").clone()
    }

    /// The variables the model's graph holds: the compute copies under mixed
    /// precision, else the variables themselves. Gradients are keyed by these.
    pub fn graph_vars(&self) -> HashMap<String, Var> {
        let copies = self.compute_copies();
        if copies.is_empty() {
            self.vars()
        } else {
            copies
        }
    }

    /// Sets every compute copy from its master variable (after the masters
    /// were loaded or updated).
    pub fn refresh_compute_copies(&self) -> Result<()> {
        let vars = self.vars();
        for (name, copy) in self.copies.lock().expect("copies lock").iter() {
            copy.set(&vars[name].as_tensor().to_dtype(self.compute_dtype)?)?;
        }
        Ok(())
    }

    /// The dtype the tensors are stored in (f32 master weights under mixed
    /// precision).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype the model computes in.
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Canonical names of every tensor of the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The checkpoint's own name for a canonical name.
    pub fn original_name(&self, canonical: &str) -> Option<&str> {
        self.original_names.get(canonical).map(String::as_str)
    }

    /// Every tensor of the checkpoint under its original name, trained ones
    /// at their current value, ready to be written to safetensors. Tensors
    /// the encoder does not use (pooler, heads) are kept as they were, so
    /// other libraries load the result without missing weights.
    pub fn current_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let vars = self
            .varmap
            .as_ref()
            .map(|v| v.data().lock().expect("varmap lock"));
        let mut out = BTreeMap::new();
        for (name, tensor) in &self.tensors {
            let tensor = match vars.as_ref().and_then(|v| v.get(name)) {
                Some(var) => var.as_tensor().clone(),
                None => tensor.clone(),
            };
            let original = self.original_name(name).unwrap_or(name).to_string();
            out.insert(original, tensor);
        }
        Ok(out)
    }

    pub fn view(&self) -> WeightsView<'_> {
        WeightsView {
            weights: self,
            prefix: String::new(),
        }
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::Weight(format!("the checkpoint has no weight `{name}`")))?;
        if !tensor.dtype().is_float() {
            return Err(Error::Weight(format!(
                "weight `{name}` has dtype {:?}; supported: F32, F16, BF16 or F64 (converted to the model's {:?})",
                tensor.dtype(),
                self.dtype
            )));
        }
        if tensor.dims() != shape {
            return Err(Error::Weight(format!(
                "weight `{name}` has shape {:?}, expected {shape:?}",
                tensor.dims()
            )));
        }
        let Some(varmap) = &self.varmap else {
            return Ok(tensor.to_dtype(self.compute_dtype)?);
        };
        let var = get_or_insert(
            &mut varmap.data().lock().expect("varmap lock"),
            name,
            || Ok(tensor.clone()),
        )?;
        if self.compute_dtype == self.dtype {
            return Ok(var.as_tensor().clone());
        }
        let mut copies = self.copies.lock().expect("copies lock");
        let copy = get_or_insert(&mut copies, name, || {
            Ok(var.as_tensor().to_dtype(self.compute_dtype)?)
        })?;
        Ok(copy.as_tensor().clone())
    }
}

/// The variable `name` of `vars`, made from `init` the first time.
fn get_or_insert(
    vars: &mut HashMap<String, Var>,
    name: &str,
    init: impl FnOnce() -> Result<Tensor>,
) -> Result<Var> {
    if let Some(var) = vars.get(name) {
        return Ok(var.clone());
    }
    let var = Var::from_tensor(&init()?)?;
    vars.insert(name.to_string(), var.clone());
    Ok(var)
}

/// A prefix into [`Weights`], like candle's `VarBuilder::pp`.
pub struct WeightsView<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl WeightsView<'_> {
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        WeightsView {
            weights: self.weights,
            prefix,
        }
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights.get(&self.pp(name).prefix, shape)
    }

    /// Whether the checkpoint has `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.tensors.contains_key(&self.pp(name).prefix)
    }
}

fn canonical_name(name: &str, strip_prefixes: &[&str]) -> String {
    let mut name = name;
    for prefix in strip_prefixes {
        if let Some(rest) = name.strip_prefix(prefix) {
            name = rest;
            break;
        }
    }
    if let Some(stem) = name.strip_suffix("LayerNorm.gamma") {
        format!("{stem}LayerNorm.weight")
    } else if let Some(stem) = name.strip_suffix("LayerNorm.beta") {
        format!("{stem}LayerNorm.bias")
    } else {
        name.to_string()
    }
}

fn unreadable(path: &Path, e: candle_core::Error) -> Error {
    // candle may add the path itself; say it once.
    let e = match crate::error::without_backtrace(e) {
        candle_core::Error::WithPath { inner, .. } => *inner,
        e => e,
    };
    Error::Weight(format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::canonical_name;

    #[test]
    fn canonical_names() {
        let p = ["bert."];
        assert_eq!(
            canonical_name("bert.embeddings.LayerNorm.gamma", &p),
            "embeddings.LayerNorm.weight"
        );
        assert_eq!(
            canonical_name("encoder.layer.0.output.LayerNorm.beta", &p),
            "encoder.layer.0.output.LayerNorm.bias"
        );
        assert_eq!(
            canonical_name("cls.predictions.bias", &p),
            "cls.predictions.bias"
        );
    }
}
