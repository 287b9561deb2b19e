//! The CUDA side of the custom ops (feature `cuda`). LayerNorm and the
//! softmax run candle-kernels' fused row kernels (the ones candle-nn's
//! inference ops launch); dropout and AdamW's in-place updates run
//! embedtune's own kernels (`cuda/*.cu`, PTX built by `build.rs`), dropout
//! drawing the same counter-based masks as the CPU. The ops themselves, and
//! their backward passes, are in [`crate::layers::fused`],
//! [`crate::layers::dropout`] and [`crate::training::optim`];
//! `tests/device.rs` checks them against the CPU when
//! `EMBEDTUNE_TEST_DEVICE=cuda`, and `tests/cuda_kernels_on_host.rs` runs
//! the kernels' arithmetic on the host.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr, kernels};
use candle_core::{CudaStorage, Layout, Result, Shape, WithDType};

use crate::layers::dropout::DropoutOp;

const DROPOUT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dropout.ptx"));
const ADAMW_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));

/// A grid-stride launch over `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    let threads = 256u32;
    LaunchConfig {
        grid_dim: (
            n.div_ceil(threads as usize).clamp(1, 65_535 * 8) as u32,
            1,
            1,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The contiguous data of an f32 operand.
fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice::<f32>()?.slice(start..end)),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// `(rows, cols)` of a tensor normalised over its last dimension.
fn rows_cols(l: &Layout) -> (usize, usize) {
    let cols = l.dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / cols, cols)
}

/// LayerNorm over the last dimension, f32.
pub fn layer_norm(
    (x, lx): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let (src, gamma, beta) = (
        view(x, lx, "layer norm input")?,
        view(g, lg, "layer norm weight")?,
        view(b, lb, "layer norm bias")?,
    );
    let (rows, cols) = rows_cols(lx);
    // SAFETY: every element is written by the kernel below.
    let dst = unsafe { dev.alloc::<f32>(rows * cols)? };
    if rows > 0 {
        let block = if cols < 1024 { 32 } else { 1024 };
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        let func = dev.get_or_load_func("layernorm_f32", &kernels::REDUCE)?;
        let mut args = func.builder();
        let (n, block) = (cols as i32, block as i32);
        args.arg(&src).arg(&dst).arg(&gamma).arg(&beta);
        args.arg(&n).arg(&block).arg(&eps);
        // SAFETY: the kernel's signature is (x, dst, alpha, beta, ncols,
        // block_size, eps), as candle-nn launches it.
        unsafe { args.launch(cfg) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(dst, dev.clone()),
        lx.shape().clone(),
    ))
}

/// Softmax over the last dimension, f32.
pub fn softmax(x: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let src = view(x, l, "softmax input")?;
    let (rows, cols) = rows_cols(l);
    // SAFETY: every element is written by the kernel below.
    let dst = unsafe { dev.alloc::<f32>(rows * cols)? };
    if rows > 0 {
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (1, 32, 1),
            shared_mem_bytes: 0,
        };
        let func = dev.get_or_load_func("softmax_f32", &kernels::REDUCE)?;
        let mut args = func.builder();
        let n = cols as i32;
        args.arg(&src).arg(&dst).arg(&n);
        // SAFETY: the kernel's signature is (x, dst, ncols).
        unsafe { args.launch(cfg) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(dst, dev.clone()),
        l.shape().clone(),
    ))
}

/// Dropout of a contiguous `(b, groups, t, cols)` block (f32, f16, bf16).
pub fn dropout(x: &CudaStorage, l: &Layout, d: &DropoutOp) -> Result<(CudaStorage, Shape)> {
    use candle_core::DType;
    let storage = match x.dtype() {
        DType::F32 => dropout_typed::<f32>(x, l, d)?,
        DType::F16 => dropout_typed::<half::f16>(x, l, d)?,
        DType::BF16 => dropout_typed::<half::bf16>(x, l, d)?,
        other => candle_core::bail!("dropout on CUDA: unsupported dtype {other:?}"),
    };
    Ok((storage, l.shape().clone()))
}

fn dropout_typed<T: CudaDType + DeviceRepr + WithDType>(
    x: &CudaStorage,
    l: &Layout,
    d: &DropoutOp,
) -> Result<CudaStorage> {
    let dev = x.device();
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("dropout input must be contiguous");
    };
    let src = x.as_cuda_slice::<T>()?.slice(start..end);
    let n = end - start;
    // SAFETY: every element is written by the kernel below.
    let dst = unsafe { dev.alloc::<T>(n)? };
    if n > 0 {
        let rows = dev.clone_htod(&d.rows)?;
        let name = format!("embedtune_dropout_{}", T::DTYPE.as_str());
        let func = dev.get_or_load_custom_func(&name, "embedtune_dropout", DROPOUT_PTX)?;
        let cfg = elementwise(n);
        let (groups, t, cols, n) = (d.groups as u32, d.t as u32, d.cols as u32, n as u64);
        let mut args = func.builder();
        args.arg(&src).arg(&dst).arg(&rows);
        args.arg(&d.key.0).arg(&d.threshold).arg(&d.scale);
        args.arg(&groups).arg(&t).arg(&cols).arg(&n);
        // SAFETY: the arguments follow the kernel's signature in
        // cuda/dropout.cu; the kernel strides over all n elements.
        unsafe { args.launch(cfg) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(dst, dev.clone()))
}

/// The contiguous data of an f32 operand updated in place.
fn view_mut<'a>(s: &'a mut CudaStorage, l: &Layout, what: &str) -> Result<CudaViewMut<'a, f32>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice_mut::<f32>()?.slice_mut(start..end)),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// `m ← β·m + rest·(s·g)` (or `(s·g)²`), in place, f32; `factors` are
/// `(β, rest, s)`.
pub fn adamw_moment(
    (m, lm): (&mut CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    (beta, rest, grad_scale): (f32, f32, f32),
    square: bool,
) -> Result<()> {
    let dev = m.device().clone();
    let n = lm.shape().elem_count();
    let g = view(g, lg, "gradient")?;
    let mut m = view_mut(m, lm, "AdamW moment")?;
    if n == 0 {
        return Ok(());
    }
    let func =
        dev.get_or_load_custom_func("embedtune_adamw_moment", "embedtune_adamw", ADAMW_PTX)?;
    let (square, n) = (square as u32, n as u64);
    let mut args = func.builder();
    args.arg(&mut m).arg(&g).arg(&beta).arg(&rest);
    args.arg(&grad_scale).arg(&square).arg(&n);
    // SAFETY: the arguments follow the kernel's signature in cuda/adamw.cu.
    unsafe { args.launch(elementwise(n as usize)) }.w()?;
    Ok(())
}

/// AdamW's step factors, as the CPU update takes them.
pub struct AdamWLaunch {
    pub decay: f32,
    pub lr: f32,
    pub eps: f32,
    pub inv_bc1: f32,
    pub inv_bc2: f32,
}

/// `θ ← θ·decay − lr · (m/bc1) / (√(v/bc2) + ε)`, in place, f32.
pub fn adamw_update(
    (theta, lt): (&mut CudaStorage, &Layout),
    (m, lm): (&CudaStorage, &Layout),
    (v, lv): (&CudaStorage, &Layout),
    a: &AdamWLaunch,
) -> Result<()> {
    let dev = theta.device().clone();
    let n = lt.shape().elem_count();
    let (m, v) = (view(m, lm, "AdamW moment")?, view(v, lv, "AdamW moment")?);
    let mut theta = view_mut(theta, lt, "AdamW parameter")?;
    if n == 0 {
        return Ok(());
    }
    let func =
        dev.get_or_load_custom_func("embedtune_adamw_update", "embedtune_adamw", ADAMW_PTX)?;
    let n = n as u64;
    let mut args = func.builder();
    args.arg(&mut theta).arg(&m).arg(&v);
    args.arg(&a.decay)
        .arg(&a.lr)
        .arg(&a.eps)
        .arg(&a.inv_bc1)
        .arg(&a.inv_bc2);
    args.arg(&n);
    // SAFETY: the arguments follow the kernel's signature in cuda/adamw.cu.
    unsafe { args.launch(elementwise(n as usize)) }.w()?;
    Ok(())
}
