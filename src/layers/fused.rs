//! Fused CPU kernels with their own backward pass, for the ops the training
//! path runs most: LayerNorm and the attention softmax.
//!
//! candle's fused versions have no backward and its differentiable ones are
//! compositions of many small ops, each a pass over memory and a node in the
//! graph. These run in one pass (rows in parallel) and give exact gradients.
//! They cover f32 on the CPU; every other case takes candle's path, so each
//! device keeps a correct fallback (`tests/fused_ops.rs` checks the kernels
//! against the compositions, forward and backward).

use candle_core::{CpuStorage, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Layer normalisation over the last dimension.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    if cpu_f32(x) && cpu_f32(gamma) && cpu_f32(beta) {
        return Ok(x
            .contiguous()?
            .apply_op3(gamma, beta, LayerNormOp { eps: eps as f32 })?);
    }
    if x.track_op() || gamma.track_op() || beta.track_op() {
        Ok(candle_nn::ops::layer_norm_slow(x, gamma, beta, eps as f32)?)
    } else {
        Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            gamma,
            beta,
            eps as f32,
        )?)
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if cpu_f32(x) {
        return Ok(x.contiguous()?.apply_op1(SoftmaxOp)?);
    }
    if x.track_op() {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

struct LayerNormOp {
    eps: f32,
}

/// Mean and 1/σ of one row.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl candle_core::CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "embedtune-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer norm input")?;
        let (g, b) = (
            f32_slice(s2, l2, "layer norm weight")?,
            f32_slice(s3, l3, "layer norm bias")?,
        );
        let h = g.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .for_each(|(o, row)| {
                let (mean, rstd) = row_stats(row, self.eps);
                for i in 0..h {
                    o[i] = (row[i] - mean) * rstd * g[i] + b[i];
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = gamma.dim(0)?;
        let rows = x.elem_count() / h;
        // One pass gives all three gradients, packed as rows of one tensor:
        // 0..rows = dx, then dγ, then dβ.
        let packed = x.apply_op3_no_bwd(
            gamma,
            &grad.contiguous()?,
            &LayerNormBwdOp { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dg = packed.get(rows)?;
        let db = packed.get(rows + 1)?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

struct LayerNormBwdOp {
    eps: f32,
}

impl candle_core::CustomOp3 for LayerNormBwdOp {
    fn name(&self) -> &'static str {
        "embedtune-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer norm input")?;
        let g = f32_slice(s2, l2, "layer norm weight")?;
        let dy = f32_slice(s3, l3, "layer norm gradient")?;
        let h = g.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; (rows + 2) * h];
        let (dx, params) = out.split_at_mut(rows * h);
        // dx = rstd · (dŷ − mean(dŷ) − x̂ · mean(dŷ · x̂)), with dŷ = dy · γ.
        dx.par_chunks_mut(h)
            .zip(x.par_chunks(h).zip(dy.par_chunks(h)))
            .for_each(|(dxr, (xr, dyr))| {
                let (mean, rstd) = row_stats(xr, self.eps);
                let (mut s1, mut s2) = (0f32, 0f32);
                for i in 0..h {
                    let dyh = dyr[i] * g[i];
                    s1 += dyh;
                    s2 += dyh * (xr[i] - mean) * rstd;
                }
                let (m1, m2) = (s1 / h as f32, s2 / h as f32);
                for i in 0..h {
                    let xh = (xr[i] - mean) * rstd;
                    dxr[i] = rstd * (dyr[i] * g[i] - m1 - xh * m2);
                }
            });
        // dγ = Σ_rows dy · x̂, dβ = Σ_rows dy: per-chunk partial sums, then added.
        let chunk = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let partial: Vec<Vec<f32>> = x
            .par_chunks(chunk * h)
            .zip(dy.par_chunks(chunk * h))
            .map(|(xs, dys)| {
                let mut acc = vec![0f32; 2 * h];
                for (xr, dyr) in xs.chunks(h).zip(dys.chunks(h)) {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    for i in 0..h {
                        acc[i] += dyr[i] * (xr[i] - mean) * rstd;
                        acc[h + i] += dyr[i];
                    }
                }
                acc
            })
            .collect();
        for p in partial {
            for (a, v) in params.iter_mut().zip(p) {
                *a += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, h))))
    }
}

struct SoftmaxOp;

impl candle_core::CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "embedtune-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax input")?;
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(o, row)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (oi, xi) in o.iter_mut().zip(row) {
                    *oi = (xi - max).exp();
                    sum += *oi;
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dx = y ⊙ (g − Σ_j g_j y_j)
        Ok(Some(
            y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwdOp)?,
        ))
    }
}

struct SoftmaxBwdOp;

impl candle_core::CustomOp2 for SoftmaxBwdOp {
    fn name(&self) -> &'static str {
        "embedtune-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, "softmax output")?;
        let g = f32_slice(s2, l2, "softmax gradient")?;
        let n = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(g.par_chunks(n)))
            .for_each(|(o, (yr, gr))| {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for i in 0..n {
                    o[i] = yr[i] * (gr[i] - dot);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Exact (erf) GELU, `x · Φ(x)`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if cpu_f32(x) {
        return Ok(x.contiguous()?.apply_op1(GeluOp)?);
    }
    Ok(x.gelu_erf()?)
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7, below f32's
/// resolution of GELU's output); libm's erff dominated GELU's cost.
fn erf(x: f32) -> f32 {
    let (p, a1, a2, a3, a4, a5) = (
        0.327_591_1,
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    );
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + p * x);
    let poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t;
    s * (1.0 - poly * (-x * x).exp())
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

struct GeluOp;

impl candle_core::CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "embedtune-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gelu input")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(o, xs)| {
                for (oi, &v) in o.iter_mut().zip(xs) {
                    *oi = 0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2));
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBwdOp)?))
    }
}

struct GeluBwdOp;

impl candle_core::CustomOp2 for GeluBwdOp {
    fn name(&self) -> &'static str {
        "embedtune-gelu-erf-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "gelu input")?;
        let g = f32_slice(s2, l2, "gelu gradient")?;
        let mut out = vec![0f32; x.len()];
        // d/dx x·Φ(x) = Φ(x) + x·φ(x)
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096).zip(g.par_chunks(4096)))
            .for_each(|(o, (xs, gs))| {
                for ((oi, &v), &gi) in o.iter_mut().zip(xs).zip(gs) {
                    let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
                    let pdf = INV_SQRT_2PI * (-0.5 * v * v).exp();
                    *oi = gi * (cdf + v * pdf);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
