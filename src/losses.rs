//! Training objectives on sentence embeddings (differentiable candle ops).
//!
//! Wang & Isola (ICML 2020): contrastive learning optimises *alignment*
//! (positive pairs close) and *uniformity* (features spread over the
//! hypersphere); both can be trained on directly. `info_nce` is SimCSE's
//! in-batch contrastive loss. Inputs are normalised here, so callers may
//! pass raw pooled vectors.

use candle_core::{D, DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::pooling::l2_normalize;

/// `mean_i ‖xᵢ − yᵢ‖₂^α` over positive pairs `(xᵢ, yᵢ)`.
pub fn align(x: &Tensor, y: &Tensor, alpha: f64) -> Result<Tensor> {
    check_pair(x, y)?;
    let sq = (l2_normalize(x)? - l2_normalize(y)?)?
        .sqr()?
        .sum(D::Minus1)?;
    let per_pair = if alpha == 2.0 {
        sq
    } else {
        // ‖d‖^α = (‖d‖²)^(α/2); the epsilon keeps the gradient finite when
        // a pair coincides and α < 2.
        (sq + 1e-12)?.powf(alpha / 2.0)?
    };
    Ok(per_pair.mean_all()?)
}

/// `log mean_{i<j} exp(−t‖xᵢ − xⱼ‖²)`, computed as a log-sum-exp so that it
/// stays finite however far apart the points are.
pub fn uniform(x: &Tensor, t: f64) -> Result<Tensor> {
    let n = x.dim(0)?;
    if n < 2 {
        return Err(Error::Invalid(format!(
            "uniformity needs at least 2 embeddings, got {n}"
        )));
    }
    let x = l2_normalize(x)?;
    let sq_dist = squared_distances(&x)?;
    let logits = (sq_dist * (-t))?;
    // Only distinct pairs i < j count; the others are pushed far below.
    let upper = upper_triangle_mask(n, x.dtype(), x.device())?;
    let logits = (logits.broadcast_mul(&upper)? + ((upper.ones_like()? - &upper)? * -1e9)?)?;
    let pairs = (n * (n - 1) / 2) as f64;
    Ok((log_sum_exp_all(&logits)? - pairs.ln())?)
}

/// SimCSE's in-batch contrastive loss: cross-entropy over cosine
/// similarities `cos(xᵢ, yⱼ)/τ` with the matching row as the target.
pub fn info_nce(x: &Tensor, y: &Tensor, tau: f64) -> Result<Tensor> {
    check_pair(x, y)?;
    let n = x.dim(0)?;
    let sim = (l2_normalize(x)?.matmul(&l2_normalize(y)?.t()?)? / tau)?;
    let log_probs = candle_nn::ops::log_softmax(&sim, D::Minus1)?;
    let eye = Tensor::eye(n, x.dtype(), x.device())?;
    Ok((log_probs.mul(&eye)?.sum_all()? * (-1.0 / n as f64))?)
}

/// Listwise similarity distillation (ListNet, as in RankCSE, Liu et al.,
/// ACL 2023): for each sentence i, the distribution over the *other*
/// sentences j ≠ i of `softmax_j cos(xᵢ, yⱼ)/τ` is pulled towards the
/// guide's `softmax_j cos(gᵢ, gⱼ)/τ` by `KL(guide ‖ student)`, averaged over
/// rows. The diagonal is left out: which sentence is the positive is
/// InfoNCE's business; this term teaches how similar the others are.
pub fn rank_distill(x: &Tensor, y: &Tensor, guide: &Tensor, tau: f64) -> Result<Tensor> {
    check_pair(x, y)?;
    check_pair(x, guide)?;
    let n = x.dim(0)?;
    if n < 2 {
        return Err(Error::Invalid(format!(
            "similarity distillation needs at least 2 embeddings, got {n}"
        )));
    }
    let off_diagonal = |sim: Tensor| -> Result<Tensor> {
        let eye = Tensor::eye(n, sim.dtype(), sim.device())?;
        Ok((sim + (eye * -1e4)?)?)
    };
    let g = l2_normalize(&guide.to_dtype(x.dtype())?.detach())?;
    let target = off_diagonal((g.matmul(&g.t()?)? / tau)?)?;
    let student = off_diagonal((l2_normalize(x)?.matmul(&l2_normalize(y)?.t()?)? / tau)?)?;
    let log_p = candle_nn::ops::log_softmax(&target, D::Minus1)?;
    let log_q = candle_nn::ops::log_softmax(&student, D::Minus1)?;
    let kl = (log_p.exp()? * (log_p - log_q)?)?.sum_all()?;
    Ok((kl / n as f64)?)
}

/// Which objective to train, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossConfig {
    pub w_align: f64,
    pub w_uniform: f64,
    pub w_info_nce: f64,
    /// Exponent of the alignment distance.
    pub alpha: f64,
    /// Uniformity temperature.
    pub t: f64,
    /// InfoNCE temperature (also that of the guide's distillation).
    pub tau: f64,
    /// Weight of [`rank_distill`] towards the guide's similarities (0 unless
    /// `fit --guide` is given).
    #[serde(default)]
    pub w_guide: f64,
    /// Subtract each view's batch mean before every term (`--center-batch`),
    /// so training shapes the centred vectors a mean-removing Dense module
    /// will give out.
    #[serde(default)]
    pub center: bool,
}

impl LossConfig {
    /// Alignment + uniformity with Wang & Isola's defaults (α = 2, t = 2).
    pub fn align_uniform() -> Self {
        LossConfig {
            w_align: 1.0,
            w_uniform: 1.0,
            w_info_nce: 0.0,
            alpha: 2.0,
            t: 2.0,
            tau: 0.05,
            w_guide: 0.0,
            center: false,
        }
    }

    /// SimCSE's InfoNCE with τ = 0.05.
    pub fn info_nce() -> Self {
        LossConfig {
            w_align: 0.0,
            w_uniform: 0.0,
            w_info_nce: 1.0,
            ..Self::align_uniform()
        }
    }

    /// Both, weighted 1 : 1 : 1.
    pub fn combined() -> Self {
        LossConfig {
            w_info_nce: 1.0,
            ..Self::align_uniform()
        }
    }

    /// Checks every parameter before any work: the exponent and the
    /// temperatures positive, the weights non-negative and not all zero.
    /// Errors name the command-line option.
    pub fn validate(&self) -> Result<()> {
        for (name, v, what) in [
            ("--alpha", self.alpha, "the alignment exponent"),
            ("--t", self.t, "the uniformity temperature"),
            ("--tau", self.tau, "the InfoNCE temperature"),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::setting(
                    name,
                    v,
                    format!("{what} must be a positive number"),
                ));
            }
        }
        for (name, v) in [
            ("--w-align", self.w_align),
            ("--w-uniform", self.w_uniform),
            ("--w-infonce", self.w_info_nce),
            ("--w-guide", self.w_guide),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::setting(
                    name,
                    v,
                    "a loss weight must be a finite number ≥ 0",
                ));
            }
        }
        if self.w_align + self.w_uniform + self.w_info_nce + self.w_guide == 0.0 {
            return Err(Error::Invalid(
                "every loss weight is 0: nothing to train (give --w-align, --w-uniform or --w-infonce a positive weight)".into(),
            ));
        }
        Ok(())
    }
}

/// The loss of one batch and its parts (scalars; the parts are reported
/// whatever their weight).
pub struct LossParts {
    pub total: Tensor,
    pub align: Tensor,
    /// Mean of `uniform(x)` and `uniform(y)`, as in the reference.
    pub uniform: Tensor,
    pub info_nce: Option<Tensor>,
    pub guide: Option<Tensor>,
}

/// `w_align·align + w_uniform·(uniform(x) + uniform(y))/2 + w_nce·info_nce
/// + w_guide·rank_distill` on two views `x`, `y` of the same sentences and,
/// when `w_guide` is not 0, the `guide`'s vectors of those sentences.
pub fn combined(
    x: &Tensor,
    y: &Tensor,
    guide: Option<&Tensor>,
    cfg: &LossConfig,
) -> Result<LossParts> {
    let (x, y) = if cfg.center {
        (&center(x)?, &center(y)?)
    } else {
        (x, y)
    };
    let a = align(x, y, cfg.alpha)?;
    let u = ((uniform(x, cfg.t)? + uniform(y, cfg.t)?)? * 0.5)?;
    let mut total = ((&a * cfg.w_align)? + (&u * cfg.w_uniform)?)?;
    let mut nce = None;
    if cfg.w_info_nce != 0.0 {
        let l = info_nce(x, y, cfg.tau)?;
        total = (total + (&l * cfg.w_info_nce)?)?;
        nce = Some(l);
    }
    let mut guided = None;
    if cfg.w_guide != 0.0 {
        let guide = guide.ok_or_else(|| {
            Error::Invalid("the loss weighs a guide (--w-guide) but no guide vectors came".into())
        })?;
        let l = rank_distill(x, y, guide, cfg.tau)?;
        total = (total + (&l * cfg.w_guide)?)?;
        guided = Some(l);
    }
    Ok(LossParts {
        total,
        align: a,
        uniform: u,
        info_nce: nce,
        guide: guided,
    })
}

/// `x` minus its row mean (a differentiable part of the loss).
fn center(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_sub(&x.mean_keepdim(0)?)?)
}

fn check_pair(x: &Tensor, y: &Tensor) -> Result<()> {
    if x.dims() != y.dims() || x.rank() != 2 {
        return Err(Error::Invalid(format!(
            "expected two (n, d) batches of the same shape, got {:?} and {:?}",
            x.dims(),
            y.dims()
        )));
    }
    Ok(())
}

/// `‖xᵢ − xⱼ‖²` for unit rows, clamped at 0 against rounding.
fn squared_distances(x: &Tensor) -> Result<Tensor> {
    let gram = x.matmul(&x.t()?)?;
    Ok((2.0 - (gram * 2.0)?)?.relu()?)
}

fn upper_triangle_mask(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..n * n)
        .map(|k| if k % n > k / n { 1.0 } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(mask, (n, n), device)?.to_dtype(dtype)?)
}

/// `log Σ exp(v)` over all elements, shifted by the (constant) maximum.
fn log_sum_exp_all(v: &Tensor) -> Result<Tensor> {
    let m = v.max_all()?.detach();
    let shifted = v.broadcast_sub(&m)?;
    Ok(shifted.exp()?.sum_all()?.log()?.add(&m)?)
}
