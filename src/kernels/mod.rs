//! CPU f32 kernels on plain slices.
//!
//! The building blocks of the hand-written BERT training pass
//! (`models::bert::backprop`) and of the fused candle ops in
//! `layers::fused`. Every kernel that walks rows runs them in parallel with
//! rayon; matrix products go to the `gemm` crate (what candle uses too).

pub mod activation;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod softmax;

pub use matmul::{Mat, matmul};
