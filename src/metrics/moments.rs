use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::inference::Embeddings;

/// Running sums of vectors: count, Σx and Σxxᵀ, in f64. Two sets merge by
/// adding their sums, so any split of the rows gives the same moments (up
/// to the order of f64 additions).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Moments {
    pub n: u64,
    pub dim: usize,
    pub(crate) sum: Vec<f64>,
    /// Row-major `dim × dim`.
    pub(crate) outer: Vec<f64>,
}

impl Moments {
    pub fn new(dim: usize) -> Self {
        Moments {
            n: 0,
            dim,
            sum: vec![0.0; dim],
            outer: vec![0.0; dim * dim],
        }
    }

    /// Adds every row of `e`.
    pub fn add(&mut self, e: &Embeddings) -> Result<()> {
        if e.dim != self.dim {
            return Err(Error::Invalid(format!(
                "embeddings of {} dimensions added to moments of {}",
                e.dim, self.dim
            )));
        }
        self.add_rows(&e.data)
    }

    /// Adds row-major rows of `dim` values (their XᵀX through one f64
    /// product; f32 products are exact in f64, only the sums round).
    pub fn add_rows(&mut self, rows: &[f32]) -> Result<()> {
        if self.dim == 0 || rows.is_empty() {
            return Ok(());
        }
        let n = rows.len() / self.dim;
        let x = Tensor::from_slice(rows, (n, self.dim), &Device::Cpu)?.to_dtype(DType::F64)?;
        let gram: Vec<f64> = x.t()?.matmul(&x)?.flatten_all()?.to_vec1()?;
        let sum: Vec<f64> = x.sum(0)?.to_vec1()?;
        add_into(&mut self.outer, &gram);
        add_into(&mut self.sum, &sum);
        self.n += n as u64;
        Ok(())
    }

    pub fn merge(&mut self, other: &Moments) {
        add_into(&mut self.outer, &other.outer);
        add_into(&mut self.sum, &other.sum);
        self.n += other.n;
    }

    /// Σx.
    pub fn sum(&self) -> &[f64] {
        &self.sum
    }

    pub fn mean(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    /// `E[xxᵀ] − μμᵀ` (the population covariance).
    pub fn covariance(&self) -> DMatrix<f64> {
        let (d, n) = (self.dim, self.n.max(1) as f64);
        let mu = self.mean();
        DMatrix::from_fn(d, d, |i, j| self.outer[i * d + j] / n - mu[i] * mu[j])
    }

    /// `E[xxᵀ]` (the uncentered second moment).
    pub fn second_moment(&self) -> DMatrix<f64> {
        let (d, n) = (self.dim, self.n.max(1) as f64);
        DMatrix::from_fn(d, d, |i, j| self.outer[i * d + j] / n)
    }
}

pub(crate) fn add_into(acc: &mut [f64], v: &[f64]) {
    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
}
