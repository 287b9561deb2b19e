//! AdamW with decoupled weight decay, gradient-norm clipping and a linear
//! warm-up/decay schedule. Our own rather than candle-nn's so its moments
//! can be checkpointed (candle-nn keeps them private) and its defaults are
//! PyTorch's (no weight decay unless asked).

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::kernels::{f32_data, f32_data_mut};

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
    /// The weight, in f32: what is updated and saved.
    var: Var,
    /// Mixed precision: the bf16/f16 copy the model computes with. Its
    /// gradient is the weight's, and it is set from the weight after each
    /// update.
    copy: Option<Var>,
    m: Tensor,
    v: Tensor,
}

impl Slot {
    /// This weight's gradient as the backward left it (in the compute
    /// copy's dtype under mixed precision).
    fn raw_grad<'g>(&self, grads: &'g GradStore) -> Option<&'g Tensor> {
        grads.get(self.copy.as_ref().unwrap_or(&self.var).as_tensor())
    }

    /// This weight's gradient, in the weight's dtype.
    fn grad(&self, grads: &GradStore) -> Result<Option<Tensor>> {
        self.raw_grad(grads)
            .map(|g| Ok(g.to_dtype(self.var.dtype())?))
            .transpose()
    }

    /// One AdamW update of this weight with gradient `g` (scaled by
    /// `grad_scale`) and bias corrections `bc`.
    fn update(
        &mut self,
        g: &Tensor,
        p: AdamWParams,
        lr: f64,
        grad_scale: f64,
        (bc1, bc2): (f64, f64),
    ) -> Result<()> {
        let theta = self.var.as_tensor();
        if [theta, g, &self.m, &self.v].into_iter().all(fused_update) {
            // In place, one pass over each buffer: the moments, then θ.
            let moment = |beta, square| Moment {
                beta,
                grad_scale,
                square,
            };
            self.m.inplace_op2(g, &moment(p.beta1, false))?;
            self.v.inplace_op2(g, &moment(p.beta2, true))?;
            theta.inplace_op3(&self.m, &self.v, &FusedUpdate { p, lr, bc1, bc2 })?;
            return Ok(());
        }
        let g = (g * grad_scale)?;
        self.m = ((&self.m * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
        self.v = ((&self.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
        let m_hat = (&self.m / bc1)?;
        let v_hat = (&self.v / bc2)?;
        let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
        let decayed = if p.weight_decay != 0.0 {
            (theta * (1.0 - lr * p.weight_decay))?
        } else {
            theta.clone()
        };
        self.var.set(&(decayed - (update * lr)?)?)?;
        Ok(())
    }
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
                    copy: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            slots,
            t: 0,
        })
    }

    /// The optimizer of a model's trainable weights, its compute copies
    /// (mixed precision) included.
    pub fn for_weights(weights: &crate::layers::Weights, params: AdamWParams) -> Result<Self> {
        Ok(Self::new(&weights.vars(), params)?.with_compute_copies(&weights.compute_copies()))
    }

    /// Mixed precision: the model computes with `copies` (by name) of the
    /// variables; their gradients update the variables, and each copy is
    /// set from its variable after every update.
    pub fn with_compute_copies(mut self, copies: &HashMap<String, Var>) -> Self {
        for slot in &mut self.slots {
            slot.copy = copies.get(&slot.name).cloned();
        }
        self
    }

    /// The global L2 norm of the gradients. Off the CPU the squares are
    /// summed on the device and read back once, not once per weight; a
    /// half-precision gradient goes to f64 in one conversion.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut host = 0f64;
        let mut on_device: Option<Tensor> = None;
        for slot in &self.slots {
            let Some(g) = slot.raw_grad(grads) else {
                continue;
            };
            match cpu_sum_sq(g) {
                Some(v) => host += v,
                None => {
                    let s = g.to_dtype(DType::F64)?.sqr()?.sum_all()?;
                    on_device = Some(match on_device {
                        Some(total) => (total + s)?,
                        None => s,
                    });
                }
            }
        }
        if let Some(total) = on_device {
            host += total.to_scalar::<f64>()?;
        }
        Ok(host.sqrt())
    }

    /// One update with learning rate `lr`, each gradient multiplied by
    /// `grad_scale` first (see [`clip_scale`]). Variables without a gradient
    /// are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for slot in &mut self.slots {
            let Some(g) = slot.grad(grads)? else {
                continue;
            };
            slot.update(&g, p, lr, grad_scale, (bc1, bc2))?;
            if let Some(copy) = &slot.copy {
                copy.set(&slot.var.as_tensor().to_dtype(copy.dtype())?)?;
            }
        }
        Ok(())
    }

    /// Saves the moments (`m.NAME`, `v.NAME`) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map = std::collections::BTreeMap::new();
        for s in &self.slots {
            map.insert(format!("m.{}", s.name), s.m.clone());
            map.insert(format!("v.{}", s.name), s.v.clone());
        }
        crate::output::model_folder::save_safetensors(path, &map)
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

/// The factor that brings gradients of global norm `norm` down to
/// `max_norm` (as torch's `clip_grad_norm_`); 1 when within it or unset.
pub fn clip_scale(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if norm > max => max / (norm + 1e-6),
        _ => 1.0,
    }
}

/// Sum of squares of a contiguous f32 CPU tensor's data, if `t` is one.
fn cpu_sum_sq(t: &Tensor) -> Option<f64> {
    if !is_cpu_f32(t) {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else {
        return None;
    };
    let v = f32_data(s, layout, "gradient").ok()?;
    Some(
        v.par_chunks(1 << 16)
            .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .sum(),
    )
}

fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Whether the in-place update kernels cover `t` (contiguous f32 on the
/// CPU, or on CUDA in a CUDA build); elsewhere AdamW runs as tensor ops.
fn fused_update(t: &Tensor) -> bool {
    crate::device::own_f32_kernels(t) && t.is_contiguous()
}

const CHUNK: usize = 1 << 14;

/// `m ← β·m + (1 − β)·(s·g)` (or `(s·g)²` for the second moment), in place.
struct Moment {
    beta: f64,
    grad_scale: f64,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "embedtune-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        g_l: &Layout,
    ) -> candle_core::Result<()> {
        let m = f32_data_mut(dst, dst_l, "AdamW moment")?;
        let g = f32_data(g, g_l, "gradient")?;
        let (beta, rest, s) = self.factors();
        let square = self.square;
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    let g = g * s;
                    *m = beta * *m + rest * if square { g * g } else { g };
                }
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        g: &candle_core::CudaStorage,
        g_l: &Layout,
    ) -> candle_core::Result<()> {
        crate::cuda::adamw_moment((dst, dst_l), (g, g_l), self.factors(), self.square)
    }
}

impl Moment {
    /// The f32 factors of the update: β, 1 − β, the gradient's scale.
    fn factors(&self) -> (f32, f32, f32) {
        (
            self.beta as f32,
            (1.0 - self.beta) as f32,
            self.grad_scale as f32,
        )
    }
}

/// `θ ← θ·(1 − lr·wd) − lr · m̂ / (√v̂ + ε)`, in place.
struct FusedUpdate {
    p: AdamWParams,
    lr: f64,
    bc1: f64,
    bc2: f64,
}

impl InplaceOp3 for FusedUpdate {
    fn name(&self) -> &'static str {
        "embedtune-adamw-update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> candle_core::Result<()> {
        let theta = f32_data_mut(dst, dst_l, "AdamW parameter")?;
        let (m, v) = (
            f32_data(m, m_l, "AdamW moment")?,
            f32_data(v, v_l, "AdamW moment")?,
        );
        let (decay, lr, eps, ibc1, ibc2) = self.factors();
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(t, (m, v))| {
                for ((t, &m), &v) in t.iter_mut().zip(m).zip(v) {
                    *t = *t * decay - lr * (m * ibc1) / ((v * ibc2).sqrt() + eps);
                }
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        m: &candle_core::CudaStorage,
        m_l: &Layout,
        v: &candle_core::CudaStorage,
        v_l: &Layout,
    ) -> candle_core::Result<()> {
        let (decay, lr, eps, inv_bc1, inv_bc2) = self.factors();
        let launch = crate::cuda::AdamWLaunch {
            decay,
            lr,
            eps,
            inv_bc1,
            inv_bc2,
        };
        crate::cuda::adamw_update((dst, dst_l), (m, m_l), (v, v_l), &launch)
    }
}

impl FusedUpdate {
    /// The f32 factors of the update: decay, lr, ε, 1/bc1, 1/bc2.
    fn factors(&self) -> (f32, f32, f32, f32, f32) {
        (
            (1.0 - self.lr * self.p.weight_decay) as f32,
            self.lr as f32,
            self.p.eps as f32,
            (1.0 / self.bc1) as f32,
            (1.0 / self.bc2) as f32,
        )
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
        opt.step(&grads, 0.5, 1.0).unwrap();
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
        let grads = (var.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5)
            .unwrap()
            .backward()
            .unwrap();
        let norm = opt.grad_norm(&grads).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((clip_scale(norm, Some(1.0)) * norm - 1.0).abs() < 1e-5);
        assert_eq!(clip_scale(norm, Some(10.0)), 1.0);
        assert_eq!(clip_scale(norm, None), 1.0);
    }

    /// Three steps of the in-place f32 CPU update against the tensor
    /// formulas in f64, with weight decay and a gradient scale.
    #[test]
    fn fused_cpu_update_matches_the_tensor_path() {
        let init = [0.5f64, -1.5, 2.0, 0.0, -0.25];
        let run = |dtype: DType| -> Vec<f64> {
            let var = Var::from_tensor(
                &Tensor::new(&init, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let mut vars = HashMap::new();
            vars.insert("w".to_string(), var.clone());
            let params = AdamWParams {
                weight_decay: 0.05,
                ..Default::default()
            };
            let mut opt = AdamW::new(&vars, params).unwrap();
            for step in 0..3 {
                // loss = Σ w³ / 3 + step · Σ w: gradient w² + step.
                let w = var.as_tensor();
                let loss = ((w.powf(3.0).unwrap().sum_all().unwrap() / 3.0).unwrap()
                    + (w.sum_all().unwrap() * step as f64).unwrap())
                .unwrap();
                let grads = loss.backward().unwrap();
                let norm = opt.grad_norm(&grads).unwrap();
                opt.step(&grads, 0.1, clip_scale(norm, Some(2.0))).unwrap();
            }
            var.as_tensor()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let fused = run(DType::F32);
        let reference = run(DType::F64);
        for (a, b) in fused.iter().zip(&reference) {
            assert!((a - b).abs() < 1e-5, "{fused:?} vs {reference:?}");
        }
    }
}
