use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::inference::Embeddings;

/// Running moments of vectors in f64: the count, the mean and the centered
/// sum of squares `Σ(x − x̄)(x − x̄)ᵀ`. Blocks and partial sets combine with
/// Chan et al.'s pairwise update, so any split of the rows gives the same
/// moments up to rounding *relative to the spread* — no `E[xxᵀ] − μμᵀ`
/// cancellation when the vectors share a large offset (a narrow cone).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Moments {
    pub n: u64,
    pub dim: usize,
    pub(crate) mean: Vec<f64>,
    /// Row-major `dim × dim` centered sum of squares.
    pub(crate) m2: Vec<f64>,
}

impl Moments {
    pub fn new(dim: usize) -> Self {
        Moments {
            n: 0,
            dim,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim * dim],
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

    /// Adds row-major rows of `dim` values: the block's mean and centered
    /// XᵀX through one f64 product, then merged in.
    pub fn add_rows(&mut self, rows: &[f32]) -> Result<()> {
        if self.dim == 0 || rows.is_empty() {
            return Ok(());
        }
        let n = rows.len() / self.dim;
        let x = Tensor::from_slice(rows, (n, self.dim), &Device::Cpu)?.to_dtype(DType::F64)?;
        let mean = x.mean_keepdim(0)?;
        let centered = x.broadcast_sub(&mean)?;
        let block = Moments {
            n: n as u64,
            dim: self.dim,
            mean: mean.flatten_all()?.to_vec1()?,
            m2: centered.t()?.matmul(&centered)?.flatten_all()?.to_vec1()?,
        };
        self.merge(&block);
        Ok(())
    }

    /// Combines with `other`'s rows (Chan, Golub & LeVeque's update).
    pub fn merge(&mut self, other: &Moments) {
        if other.n == 0 {
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let delta: Vec<f64> = other
            .mean
            .iter()
            .zip(&self.mean)
            .map(|(b, a)| b - a)
            .collect();
        let w = na * nb / n;
        let d = self.dim;
        for i in 0..d {
            for j in 0..d {
                self.m2[i * d + j] += other.m2[i * d + j] + delta[i] * delta[j] * w;
            }
        }
        for (m, dl) in self.mean.iter_mut().zip(&delta) {
            *m += dl * nb / n;
        }
        self.n += other.n;
    }

    pub fn mean(&self) -> Vec<f64> {
        self.mean.clone()
    }

    /// `(1/n) Σ(x − x̄)(x − x̄)ᵀ` (the population covariance).
    pub fn covariance(&self) -> DMatrix<f64> {
        let (d, n) = (self.dim, self.n.max(1) as f64);
        DMatrix::from_fn(d, d, |i, j| self.m2[i * d + j] / n)
    }

    /// `E[xxᵀ]` (the uncentered second moment).
    pub fn second_moment(&self) -> DMatrix<f64> {
        let mu = &self.mean;
        self.covariance() + DMatrix::from_fn(self.dim, self.dim, |i, j| mu[i] * mu[j])
    }

    /// The trace of the covariance: `E‖x − x̄‖²`.
    pub fn total_variance(&self) -> f64 {
        let (d, n) = (self.dim, self.n.max(1) as f64);
        (0..d).map(|i| self.m2[i * d + i]).sum::<f64>() / n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_far_offset_does_not_cancel_the_spread() {
        // Spread 1e-4 around an offset 1e3: E[xxᵀ] − μμᵀ would keep no digit.
        let rows: Vec<f32> = (0..400)
            .map(|i| 1000.0 + if i % 2 == 0 { 1e-4 } else { -1e-4 } * (1 + i % 3) as f32)
            .collect();
        let (mut whole, mut a, mut b) = (Moments::new(2), Moments::new(2), Moments::new(2));
        whole.add_rows(&rows).unwrap();
        a.add_rows(&rows[..126]).unwrap();
        b.add_rows(&rows[126..]).unwrap();
        b.merge(&a);
        let x: Vec<f64> = rows.iter().map(|v| *v as f64).collect();
        let col = |c: usize| x.iter().skip(c).step_by(2).copied().collect::<Vec<f64>>();
        let (c0, c1) = (col(0), col(1));
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (m0, m1) = (mean(&c0), mean(&c1));
        let cov01 = c0
            .iter()
            .zip(&c1)
            .map(|(p, q)| (p - m0) * (q - m1))
            .sum::<f64>()
            / 200.0;
        for m in [&whole, &b] {
            let got = m.covariance()[(0, 1)];
            assert!(
                (got - cov01).abs() <= 1e-9 * cov01.abs(),
                "{got} vs {cov01}"
            );
        }
    }
}
