use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::inference::Embeddings;
use crate::rng::Rng;

/// Up to this many sentences every pair is used; above, a seeded sample.
pub const EXACT_PAIRS_LIMIT: usize = 10_000;
/// Pairs drawn when sampling.
pub const SAMPLED_PAIRS: usize = 2_000_000;

/// Rows scaled to unit L2 norm (zero rows stay zero).
pub fn normalized(e: &Embeddings) -> Embeddings {
    let mut data = e.data.clone();
    normalize_rows(&mut data, e.dim);
    Embeddings { dim: e.dim, data }
}

/// Scales each row of `dim` values to unit L2 norm in place (norm in f64;
/// zero rows stay zero).
pub fn normalize_rows(data: &mut [f32], dim: usize) {
    data.par_chunks_mut(dim.max(1)).for_each(|row| {
        let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        }
    });
}

/// Sum of the rows, in f64.
fn row_sum(e: &Embeddings) -> Vec<f64> {
    let mut s = vec![0f64; e.dim];
    for row in e.rows() {
        for (a, v) in s.iter_mut().zip(row) {
            *a += *v as f64;
        }
    }
    s
}

/// Mean cosine similarity over all distinct pairs `i < j`.
///
/// Exact for any `n` in linear time: for unit vectors `uᵢ`,
/// `Σ_{i<j} uᵢ·uⱼ = (‖Σ uᵢ‖² − Σ‖uᵢ‖²) / 2`.
pub fn avg_cosine(e: &Embeddings) -> Result<f64> {
    let n = e.len();
    if n < 2 {
        return Err(Error::Invalid(format!(
            "need at least 2 embeddings, got {n}"
        )));
    }
    let u = normalized(e);
    let s = row_sum(&u);
    let self_dots: f64 = u
        .rows()
        .map(|r| r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>())
        .sum();
    let total = s.iter().map(|v| v * v).sum::<f64>();
    Ok((total - self_dots) / (n as f64 * (n as f64 - 1.0)))
}

/// ‖mean of the unit-normalised rows‖: 0 when they balance out, 1 when all
/// point the same way.
pub fn mean_vector_norm(e: &Embeddings) -> f64 {
    let u = normalized(e);
    let n = u.len().max(1) as f64;
    row_sum(&u)
        .iter()
        .map(|v| (v / n).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// `mean_i ‖xᵢ − yᵢ‖²` on unit-normalised rows (Wang & Isola's alignment,
/// α = 2).
pub fn alignment(x: &Embeddings, y: &Embeddings) -> Result<f64> {
    let d = pair_distances(x, y)?;
    Ok(d.iter().map(|v| v * v).sum::<f64>() / d.len() as f64)
}

/// `‖xᵢ − yᵢ‖` of each pair of unit-normalised rows.
pub fn pair_distances(x: &Embeddings, y: &Embeddings) -> Result<Vec<f64>> {
    if x.len() != y.len() || x.dim != y.dim || x.is_empty() {
        return Err(Error::Invalid(
            "alignment needs two equal, non-empty sets".into(),
        ));
    }
    let (ux, uy) = (normalized(x), normalized(y));
    Ok(ux
        .rows()
        .zip(uy.rows())
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect())
}

/// Counts of pairwise cosines in equal bins over [−1, 1].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CosineHistogram {
    pub counts: Vec<u64>,
}

impl CosineHistogram {
    fn new(bins: usize) -> Self {
        CosineHistogram {
            counts: vec![0; bins],
        }
    }
    fn add(&mut self, cos: f64) {
        let bins = self.counts.len();
        let b = (((cos + 1.0) / 2.0) * bins as f64).floor();
        self.counts[(b.max(0.0) as usize).min(bins - 1)] += 1;
    }
    fn merge(&mut self, other: &CosineHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }
    /// The lower edge of bin `i`.
    pub fn bin_start(&self, i: usize) -> f64 {
        -1.0 + 2.0 * i as f64 / self.counts.len() as f64
    }
}

/// Figures that need pairs of sentences.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PairStats {
    /// `log mean_{i<j} exp(−t‖uᵢ − uⱼ‖²)` on unit rows.
    pub uniformity: f64,
    /// Pairs used.
    pub pairs: u64,
    /// Whether every pair was used (else a seeded sample).
    pub exact: bool,
    pub histogram: CosineHistogram,
}

/// A streaming log-sum-exp: `m + ln s` with `s = Σ exp(vᵢ − m)`.
#[derive(Clone, Copy)]
struct LogSumExp {
    m: f64,
    s: f64,
}

impl LogSumExp {
    const EMPTY: LogSumExp = LogSumExp {
        m: f64::NEG_INFINITY,
        s: 0.0,
    };
    fn add(&mut self, v: f64) {
        if v > self.m {
            self.s = self.s * (self.m - v).exp() + 1.0;
            self.m = v;
        } else {
            self.s += (v - self.m).exp();
        }
    }
    fn merge(self, o: LogSumExp) -> LogSumExp {
        if o.s == 0.0 {
            return self;
        }
        if self.s == 0.0 {
            return o;
        }
        let m = self.m.max(o.m);
        LogSumExp {
            m,
            s: self.s * (self.m - m).exp() + o.s * (o.m - m).exp(),
        }
    }
    fn value(self) -> f64 {
        self.m + self.s.ln()
    }
}

/// Uniformity (temperature `t`) and the cosine histogram over all pairs up
/// to [`EXACT_PAIRS_LIMIT`] rows, else over [`SAMPLED_PAIRS`] pairs drawn
/// with `seed`.
pub fn pair_stats(e: &Embeddings, t: f64, bins: usize, seed: u64) -> Result<PairStats> {
    let n = e.len();
    if n < 2 {
        return Err(Error::Invalid(format!(
            "need at least 2 embeddings, got {n}"
        )));
    }
    let u = normalized(e);
    let (lse, histogram, pairs, exact) = if n <= EXACT_PAIRS_LIMIT {
        let (lse, h, p) = exact_pairs(&u, t, bins)?;
        (lse, h, p, true)
    } else {
        let (lse, h, p) = sampled_pairs(&u, t, bins, seed);
        (lse, h, p, false)
    };
    Ok(PairStats {
        uniformity: lse.value() - (pairs as f64).ln(),
        pairs,
        exact,
        histogram,
    })
}

/// Every pair, a block of rows at a time: one gemm gives the block's
/// cosines against all later rows, so memory is `block × n`.
fn exact_pairs(u: &Embeddings, t: f64, bins: usize) -> Result<(LogSumExp, CosineHistogram, u64)> {
    const BLOCK: usize = 256;
    let n = u.len();
    let all = Tensor::from_slice(&u.data, (n, u.dim), &Device::Cpu)?;
    let mut lse = LogSumExp::EMPTY;
    let mut hist = CosineHistogram::new(bins);
    let mut pairs = 0u64;
    for start in (0..n).step_by(BLOCK) {
        let rows = BLOCK.min(n - start);
        let block = all.narrow(0, start, rows)?;
        let gram: Vec<f32> = block.matmul(&all.t()?)?.flatten_all()?.to_vec1()?;
        // Collected in row order and folded sequentially: the same rows
        // give the same bits, whatever threads ran them.
        let per_row: Vec<(LogSumExp, CosineHistogram)> = (0..rows)
            .into_par_iter()
            .map(|r| {
                let i = start + r;
                let mut l = LogSumExp::EMPTY;
                let mut h = CosineHistogram::new(bins);
                for &c in &gram[r * n + i + 1..(r + 1) * n] {
                    let c = (c as f64).clamp(-1.0, 1.0);
                    l.add(-t * (2.0 - 2.0 * c));
                    h.add(c);
                }
                (l, h)
            })
            .collect();
        for (r, (l, h)) in per_row.into_iter().enumerate() {
            lse = lse.merge(l);
            hist.merge(&h);
            pairs += (n - start - r - 1) as u64;
        }
    }
    Ok((lse, hist, pairs))
}

fn sampled_pairs(
    u: &Embeddings,
    t: f64,
    bins: usize,
    seed: u64,
) -> (LogSumExp, CosineHistogram, u64) {
    let n = u.len() as u64;
    let mut rng = Rng::new(seed);
    let mut lse = LogSumExp::EMPTY;
    let mut hist = CosineHistogram::new(bins);
    for _ in 0..SAMPLED_PAIRS {
        let i = rng.below(n);
        // j uniform over the other n − 1 rows.
        let mut j = rng.below(n - 1);
        if j >= i {
            j += 1;
        }
        let c: f64 = u
            .row(i as usize)
            .iter()
            .zip(u.row(j as usize))
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
            .clamp(-1.0, 1.0);
        lse.add(-t * (2.0 - 2.0 * c));
        hist.add(c);
    }
    (lse, hist, SAMPLED_PAIRS as u64)
}
