//! AdamW with decoupled weight decay, gradient-norm clipping and a linear
//! warm-up/decay schedule. Our own rather than candle-nn's so its moments
//! can be checkpointed (candle-nn keeps them private) and its defaults are
//! PyTorch's (no weight decay unless asked).

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    params: AdamWParams,
    slots: Vec<Slot>,
    /// Updates taken so far (for bias correction).
    t: u64,
}

impl AdamW {
    /// One slot per variable, in name order so checkpoints are stable.
    pub fn new(vars: &HashMap<String, Var>, params: AdamWParams) -> Result<Self> {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let slots = names
            .into_iter()
            .map(|name| {
                let var = vars[name].clone();
                Ok(Slot {
                    name: name.clone(),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    var,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            slots,
            t: 0,
        })
    }

    /// The global L2 norm of the gradients; when above `max_norm`, every
    /// gradient is scaled down to that norm (as torch's clip_grad_norm_).
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: Option<f64>) -> Result<f64> {
        let mut total = 0f64;
        for slot in &self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        let norm = total.sqrt();
        if let Some(max) = max_norm
            && norm > max
        {
            let scale = max / (norm + 1e-6);
            for slot in &self.slots {
                if let Some(g) = grads.remove(slot.var.as_tensor()) {
                    grads.insert(slot.var.as_tensor(), (g * scale)?);
                }
            }
        }
        Ok(norm)
    }

    /// One update with learning rate `lr`. Variables without a gradient are
    /// left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            slot.m = ((&slot.m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            slot.v = ((&slot.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&slot.m / bc1)?;
            let v_hat = (&slot.v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let theta = slot.var.as_tensor();
            let decayed = if p.weight_decay != 0.0 {
                (theta * (1.0 - lr * p.weight_decay))?
            } else {
                theta.clone()
            };
            slot.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Saves the moments (`m.NAME`, `v.NAME`) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        for s in &self.slots {
            map.insert(format!("m.{}", s.name), s.m.clone());
            map.insert(format!("v.{}", s.name), s.v.clone());
        }
        candle_core::safetensors::save(&map, path).map_err(Error::from)
    }

    /// Restores moments saved by [`AdamW::save`] and the step count.
    pub fn load(&mut self, path: &Path, t: u64, device: &Device) -> Result<()> {
        let map = candle_core::safetensors::load(path, device)
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
        for s in &mut self.slots {
            let get = |k: String| {
                map.get(&k).cloned().ok_or_else(|| {
                    Error::Invalid(format!("{}: no optimizer state `{k}`", path.display()))
                })
            };
            s.m = get(format!("m.{}", s.name))?;
            s.v = get(format!("v.{}", s.name))?;
        }
        self.t = t;
        Ok(())
    }
}

/// Linear warm-up to `peak` over `warmup` steps, then linear decay to 0 at
/// `total` (transformers' `get_linear_schedule_with_warmup`).
pub fn linear_schedule(step: usize, warmup: usize, total: usize, peak: f64) -> f64 {
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        let rest = total.saturating_sub(warmup).max(1) as f64;
        peak * (1.0 - (step - warmup) as f64 / rest).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((linear_schedule(0, 10, 100, 1.0) - 0.1).abs() < 1e-12);
        assert!((linear_schedule(9, 10, 100, 1.0) - 1.0).abs() < 1e-12);
        assert!((linear_schedule(10, 10, 100, 1.0) - 1.0).abs() < 1e-12);
        assert!((linear_schedule(55, 10, 100, 1.0) - 0.5).abs() < 1e-12);
        assert_eq!(linear_schedule(0, 0, 10, 2.0), 2.0);
    }

    #[test]
    fn adamw_matches_a_hand_computed_step() {
        let var = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let mut vars = HashMap::new();
        vars.insert("w".to_string(), var.clone());
        let mut opt = AdamW::new(
            &vars,
            AdamWParams {
                weight_decay: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        // loss = Σ w², gradient 2w.
        let grads = var
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads, 0.5).unwrap();
        // First step: m̂ = g, v̂ = g², update = g/(|g| + eps) = sign(g).
        let w: Vec<f64> = var.as_tensor().to_vec1().unwrap();
        let expected = [1.0 * (1.0 - 0.05) - 0.5, -2.0 * (1.0 - 0.05) + 0.5];
        assert!(
            (w[0] - expected[0]).abs() < 1e-6 && (w[1] - expected[1]).abs() < 1e-6,
            "{w:?}"
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let var = Var::new(&[3.0f64, 4.0], &Device::Cpu).unwrap();
        let mut vars = HashMap::new();
        vars.insert("w".to_string(), var.clone());
        let opt = AdamW::new(&vars, AdamWParams::default()).unwrap();
        // gradient of Σ w²/2 is w, norm 5.
        let mut grads = (var.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5)
            .unwrap()
            .backward()
            .unwrap();
        let norm = opt.clip_grad_norm(&mut grads, Some(1.0)).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let g: Vec<f64> = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
        assert!(((g[0].powi(2) + g[1].powi(2)).sqrt() - 1.0).abs() < 1e-5);
    }
}
