//! The CUDA forwards of the custom ops (feature `cuda`): LayerNorm and the
//! softmax run candle-kernels' fused row kernels (the ones candle-nn's
//! inference ops launch); dropout runs embedtune's own kernel
//! (`cuda/dropout.cu`, PTX built by `build.rs`), which draws the same
//! counter-based masks as the CPU. The backward passes are in
//! [`super::fused`] and [`super::dropout`]; `tests/device.rs` checks all of
//! them against the CPU when `EMBEDTUNE_TEST_DEVICE=cuda`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr, kernels};
use candle_core::{CudaStorage, Layout, Result, Shape, WithDType};

const DROPOUT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dropout.ptx"));

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

/// What the dropout kernel needs besides the data.
pub struct DropoutLaunch<'a> {
    pub key: u64,
    pub threshold: u32,
    pub scale: f32,
    pub rows: &'a [u64],
    pub groups: usize,
    pub t: usize,
    pub cols: usize,
}

/// Dropout of a contiguous `(b, groups, t, cols)` block (f32, f16, bf16).
pub fn dropout(x: &CudaStorage, l: &Layout, d: &DropoutLaunch) -> Result<(CudaStorage, Shape)> {
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
    d: &DropoutLaunch,
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
        let rows = dev.clone_htod(d.rows)?;
        let name = format!("embedtune_dropout_{}", T::DTYPE.as_str());
        let func = dev.get_or_load_custom_func(&name, "embedtune_dropout", DROPOUT_PTX)?;
        let threads = 256u32;
        let blocks = n.div_ceil(threads as usize).min(65_535 * 8) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let (groups, t, cols, n) = (d.groups as u32, d.t as u32, d.cols as u32, n as u64);
        let mut args = func.builder();
        args.arg(&src).arg(&dst).arg(&rows);
        args.arg(&d.key).arg(&d.threshold).arg(&d.scale);
        args.arg(&groups).arg(&t).arg(&cols).arg(&n);
        // SAFETY: the arguments follow the kernel's signature in
        // cuda/dropout.cu; the kernel strides over all n elements.
        unsafe { args.launch(cfg) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(dst, dev.clone()))
}
