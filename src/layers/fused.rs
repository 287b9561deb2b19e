//! Fused ops with their own backward pass, for the ops the training path
//! runs most: LayerNorm, the attention softmax and GELU.
//!
//! candle's fused versions have no backward and its differentiable ones are
//! compositions of many small ops, each a pass over memory and a node in the
//! graph. These run in one pass (rows in parallel) and give exact gradients.
//! They cover f32 on the CPU (the arithmetic is in [`crate::kernels`]) and,
//! for LayerNorm and softmax, on CUDA (the forward in one kernel, see
//! [`crate::cuda`]; the backward composed of candle's CUDA ops; GELU is
//! candle's own there). bf16/f16 LayerNorm and softmax run in f32. Metal
//! and other dtypes take candle's differentiable compositions
//! (`tests/fused_ops.rs` and `tests/device.rs` check the ops against them,
//! forward and backward).

use candle_core::{CpuStorage, D, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::device::own_f32_kernels;
use crate::error::Result;
use crate::kernels::activation::Activation;
use crate::kernels::f32_data;
use crate::kernels::norm::{layer_norm_backward, normalize};
use crate::kernels::softmax::{softmax_row, softmax_row_backward};

fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// bf16 and f16: the ops whose reductions lose most in half precision
/// (LayerNorm's moments, softmax's sum) run in f32, as PyTorch's autocast
/// runs them.
fn is_half(t: &Tensor) -> bool {
    matches!(t.dtype(), DType::BF16 | DType::F16)
}

/// Layer normalisation over the last dimension.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    if is_half(x) {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let y = layer_norm(&f32(x)?, &f32(gamma)?, &f32(beta)?, eps)?;
        return Ok(y.to_dtype(x.dtype())?);
    }
    if own_f32_kernels(x) && own_f32_kernels(gamma) && own_f32_kernels(beta) {
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
    if is_half(x) {
        return Ok(softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?);
    }
    if own_f32_kernels(x) {
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
        let x = f32_data(s1, l1, "layer norm input")?;
        let (g, b) = (
            f32_data(s2, l2, "layer norm weight")?,
            f32_data(s3, l3, "layer norm bias")?,
        );
        let mut out = vec![0f32; x.len()];
        crate::kernels::norm::layer_norm(x, g, b, self.eps, &mut out, false);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::layer_norm((s1, l1), (s2, l2), (s3, l3), self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !x.device().is_cpu() {
            let (dx, dg, db) = layer_norm_backward_composed(x, gamma, grad, self.eps)?;
            return Ok((Some(dx), Some(dg), Some(db)));
        }
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

/// LayerNorm's gradients `(dx, dγ, dβ)` from candle ops, for devices
/// without the fused backward (CUDA's backward): with `x̂ = (x − μ)/σ` and `u = γ ⊙ dy`,
/// `dx = (u − mean(u) − x̂ ⊙ mean(u ⊙ x̂)) / σ`, `dγ = Σ dy ⊙ x̂`, `dβ = Σ dy`
/// (sums over every row).
pub fn layer_norm_backward_composed(
    x: &Tensor,
    gamma: &Tensor,
    dy: &Tensor,
    eps: f32,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (shape, h) = (x.shape().clone(), gamma.dim(0)?);
    let (x, dy) = (x.reshape(((), h))?, dy.reshape(((), h))?);
    let centred = x.broadcast_sub(&x.mean_keepdim(1)?)?;
    let inv_std = (centred.sqr()?.mean_keepdim(1)? + eps as f64)?
        .sqrt()?
        .recip()?;
    let xhat = centred.broadcast_mul(&inv_std)?;
    let u = dy.broadcast_mul(gamma)?;
    let dx = u
        .broadcast_sub(&u.mean_keepdim(1)?)?
        .sub(&xhat.broadcast_mul(&(&u * &xhat)?.mean_keepdim(1)?)?)?
        .broadcast_mul(&inv_std)?
        .reshape(shape)?;
    let dg = (&dy * &xhat)?.sum(0)?;
    let db = dy.sum(0)?;
    Ok((dx, dg, db))
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
        let x = f32_data(s1, l1, "layer norm input")?;
        let g = f32_data(s2, l2, "layer norm weight")?;
        let dy = f32_data(s3, l3, "layer norm gradient")?;
        let h = g.len();
        let rows = x.len() / h;
        let mut out = vec![0f32; (rows + 2) * h];
        let (dx, params) = out.split_at_mut(rows * h);
        let (dg, db) = params.split_at_mut(h);
        layer_norm_backward(dy, &normalize(x, h, self.eps), g, dx, dg, db);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, h))))
    }
}

struct SoftmaxOp;

impl candle_core::CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "embedtune-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "softmax input")?;
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mut out = x.to_vec();
        out.par_chunks_mut(n).for_each(softmax_row);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::softmax(s, l)
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !y.device().is_cpu() {
            return Ok(Some(softmax_backward_composed(y, grad)?));
        }
        Ok(Some(
            y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwdOp)?,
        ))
    }
}

/// The softmax's gradient from candle ops, for devices without the fused
/// backward: `dx = y ⊙ (dy − Σ dy ⊙ y)`.
pub fn softmax_backward_composed(y: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
    let dot = (dy * y)?.sum_keepdim(D::Minus1)?;
    y * dy.broadcast_sub(&dot)?
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
        let y = f32_data(s1, l1, "softmax output")?;
        let g = f32_data(s2, l2, "softmax gradient")?;
        let n = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(g.par_chunks(n)))
            .for_each(|(o, (yr, gr))| softmax_row_backward(yr, gr, o));
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

struct GeluOp;

impl candle_core::CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "embedtune-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "gelu input")?;
        let mut out = vec![0f32; x.len()];
        Activation::Gelu.forward(x, &mut out);
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
        let x = f32_data(s1, l1, "gelu input")?;
        let mut out = f32_data(s2, l2, "gelu gradient")?.to_vec();
        Activation::Gelu.backward_inplace(x, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
