//! CPU f32 kernels on plain slices.
//!
//! The building blocks of the hand-written BERT training pass
//! (`models::bert`'s CPU pass) and of the fused candle ops in
//! `layers::fused`. Every kernel that walks rows runs them in parallel with
//! rayon; matrix products go to the `gemm` crate (what candle uses too).

pub mod activation;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod softmax;

pub use matmul::{Mat, matmul};

use candle_core::{CpuStorage, Layout};

/// The data of a contiguous f32 CPU storage (the bridge from candle's
/// storage to these kernels); `what` names the operand in the error.
pub fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{what}: expected a contiguous tensor"),
        _ => candle_core::bail!("{what}: expected f32"),
    }
}

/// Mutable [`f32_data`].
pub fn f32_data_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{what}: expected a contiguous tensor"),
        _ => candle_core::bail!("{what}: expected f32"),
    }
}

/// Runs `f` compiled for AVX2 when the CPU has it (checked at run time, so
/// the binary still runs on any x86-64); `f`'s loops are inlined here and
/// vectorised for the wider registers.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
