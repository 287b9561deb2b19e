use candle_core::{DType, Device, Tensor};
use nalgebra::{DMatrix, SymmetricEigen};

use crate::error::{Error, Result};
use crate::inference::Embeddings;

/// Principal axes of a set of vectors: eigenvalues (descending) and the
/// matching unit eigenvectors of their covariance (or, uncentered, of their
/// second-moment matrix).
#[derive(Debug, Clone)]
pub struct Spectrum {
    pub eigenvalues: Vec<f64>,
    pub eigenvectors: Vec<Vec<f64>>,
}

impl Spectrum {
    /// `(1/n) Σ (xᵢ − x̄)(xᵢ − x̄)ᵀ` when `center`, else `(1/n) Σ xᵢxᵢᵀ`.
    pub fn of(e: &Embeddings, center: bool) -> Result<Self> {
        let n = e.len();
        if n < 2 {
            return Err(Error::Invalid(format!(
                "need at least 2 embeddings, got {n}"
            )));
        }
        Ok(Self::of_matrix(second_moment(e, center)?))
    }

    /// The eigen-decomposition of a symmetric `d × d` matrix, largest
    /// eigenvalue first (negative rounding residue clamped to 0).
    pub fn of_matrix(m: DMatrix<f64>) -> Self {
        let d = m.nrows();
        let eig = SymmetricEigen::new(m);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        Spectrum {
            eigenvalues: order.iter().map(|&i| eig.eigenvalues[i].max(0.0)).collect(),
            eigenvectors: order
                .iter()
                .map(|&i| eig.eigenvectors.column(i).iter().copied().collect())
                .collect(),
        }
    }
}

/// `(1/n) XᵀX` of the (centered) rows in f64, a block of rows at a time
/// through gemm: memory is `block × d` whatever `n` is.
fn second_moment(e: &Embeddings, center: bool) -> Result<DMatrix<f64>> {
    const BLOCK: usize = 8192;
    let (n, d) = (e.len(), e.dim);
    let all = Tensor::from_slice(&e.data, (n, d), &Device::Cpu)?;
    let mean = if center {
        Some(all.to_dtype(DType::F64)?.mean_keepdim(0)?)
    } else {
        None
    };
    let mut acc = Tensor::zeros((d, d), DType::F64, &Device::Cpu)?;
    for start in (0..n).step_by(BLOCK) {
        let rows = BLOCK.min(n - start);
        let mut block = all.narrow(0, start, rows)?.to_dtype(DType::F64)?;
        if let Some(m) = &mean {
            block = block.broadcast_sub(m)?;
        }
        acc = (acc + block.t()?.matmul(&block)?)?;
    }
    let values: Vec<f64> = (acc / n as f64)?.flatten_all()?.to_vec1()?;
    Ok(DMatrix::from_row_slice(d, d, &values))
}

/// Share of the variance along the first principal component.
pub fn top1_variance_ratio(s: &Spectrum) -> f64 {
    let total: f64 = s.eigenvalues.iter().sum();
    if total == 0.0 {
        1.0
    } else {
        s.eigenvalues[0] / total
    }
}

/// Roy & Vetterli's effective rank: `exp(H(p))` with `pᵢ = σᵢ / Σσ` the
/// normalised singular values (σᵢ ∝ √λᵢ).
///
/// Eigenvalues at or below `d · ε · λ_max` (the rank tolerance of LAPACK
/// and `numpy.linalg.matrix_rank`) are numerically zero and count as zero:
/// their square roots (≈ 1e-9 here) are rounding noise that would
/// otherwise shift the result in its ninth digit, differently for every
/// way of computing the same moments.
pub fn effective_rank(s: &Spectrum) -> f64 {
    let max = s.eigenvalues.iter().copied().fold(0.0, f64::max);
    let tolerance = max * s.eigenvalues.len() as f64 * f64::EPSILON;
    let sigma: Vec<f64> = s
        .eigenvalues
        .iter()
        .map(|&l| if l > tolerance { l.sqrt() } else { 0.0 })
        .collect();
    let total: f64 = sigma.iter().sum();
    if total == 0.0 {
        return 1.0;
    }
    let h: f64 = sigma
        .iter()
        .map(|v| v / total)
        .filter(|p| *p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}

/// IsoScore (Rudman et al., 2022) from the covariance spectrum of the point
/// cloud: 1 when every dimension is used equally, 0 when one is.
///
/// The variances along the principal axes `Σ_D` are scaled to norm √d, their
/// distance to the all-ones vector `δ = ‖Σ̂_D − 1‖ / √(2(d − √d))` gives the
/// fraction of dimensions used, `φ = (d − δ²(d − √d))² / d²`, and
/// IsoScore `= (dφ − 1)/(d − 1)`.
pub fn isoscore(s: &Spectrum) -> f64 {
    let d = s.eigenvalues.len() as f64;
    let norm = s.eigenvalues.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm == 0.0 || d < 2.0 {
        return 0.0;
    }
    let scaled = s.eigenvalues.iter().map(|v| v * d.sqrt() / norm);
    let dist = scaled.map(|v| (v - 1.0).powi(2)).sum::<f64>().sqrt();
    let delta = dist / (2.0 * (d - d.sqrt())).sqrt();
    let phi = (d - delta * delta * (d - d.sqrt())).powi(2) / (d * d);
    ((d * phi - 1.0) / (d - 1.0)).clamp(0.0, 1.0)
}
