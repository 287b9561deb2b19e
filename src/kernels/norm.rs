//! Layer normalisation over rows, forward and backward.

use rayon::prelude::*;

/// Mean and 1/σ of one row.
pub fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// What the backward pass needs of a forward: the normalised rows `x̂` and
/// each row's 1/σ.
pub struct NormSaved {
    pub xhat: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// `out = (x − μ)/σ · γ + β` row by row; with `save`, also returns x̂ and
/// 1/σ for [`layer_norm_backward`].
pub fn layer_norm(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
    save: bool,
) -> Option<NormSaved> {
    let h = gamma.len();
    let rows = x.len() / h;
    if !save {
        out.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .for_each(|(o, row)| {
                let (mean, rstd) = row_stats(row, eps);
                for i in 0..h {
                    o[i] = (row[i] - mean) * rstd * gamma[i] + beta[i];
                }
            });
        return None;
    }
    let mut xhat = vec![0f32; x.len()];
    let mut rstd = vec![0f32; rows];
    out.par_chunks_mut(h)
        .zip(xhat.par_chunks_mut(h))
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(h))
        .for_each(|(((o, xh), rs), row)| {
            let (mean, r) = row_stats(row, eps);
            *rs = r;
            for i in 0..h {
                xh[i] = (row[i] - mean) * r;
                o[i] = xh[i] * gamma[i] + beta[i];
            }
        });
    Some(NormSaved { xhat, rstd })
}

/// x̂ and 1/σ of rows of width `h`, as [`layer_norm`] saves them (for a
/// backward pass that kept only the input).
pub fn normalize(x: &[f32], h: usize, eps: f32) -> NormSaved {
    let mut xhat = vec![0f32; x.len()];
    let mut rstd = vec![0f32; x.len() / h];
    xhat.par_chunks_mut(h)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(h))
        .for_each(|((xh, rs), row)| {
            let (mean, r) = row_stats(row, eps);
            *rs = r;
            xh.iter_mut()
                .zip(row)
                .for_each(|(o, v)| *o = (v - mean) * r);
        });
    NormSaved { xhat, rstd }
}

/// Gradients of [`layer_norm`] for upstream `dy`: writes `dx` and adds
/// `Σ dy·x̂` to `dgamma`, `Σ dy` to `dbeta`.
pub fn layer_norm_backward(
    dy: &[f32],
    saved: &NormSaved,
    gamma: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let h = gamma.len();
    // dx = 1/σ · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)), with dx̂ = dy · γ.
    dx.par_chunks_mut(h)
        .zip(dy.par_chunks(h))
        .zip(saved.xhat.par_chunks(h))
        .zip(saved.rstd.par_iter())
        .for_each(|(((dxr, dyr), xh), &rstd)| {
            let (mut s1, mut s2) = (0f32, 0f32);
            for i in 0..h {
                let d = dyr[i] * gamma[i];
                s1 += d;
                s2 += d * xh[i];
            }
            let (m1, m2) = (s1 / h as f32, s2 / h as f32);
            for i in 0..h {
                dxr[i] = rstd * (dyr[i] * gamma[i] - m1 - xh[i] * m2);
            }
        });
    let mut params = vec![0f32; 2 * h];
    super::reduce::add_column_reduction(dy.len() / h, &mut params, |r, p| {
        let (dyr, xh) = (&dy[r * h..(r + 1) * h], &saved.xhat[r * h..(r + 1) * h]);
        for i in 0..h {
            p[i] += dyr[i] * xh[i];
            p[h + i] += dyr[i];
        }
    });
    dgamma
        .iter_mut()
        .zip(&params[..h])
        .for_each(|(a, v)| *a += v);
    dbeta
        .iter_mut()
        .zip(&params[h..])
        .for_each(|(a, v)| *a += v);
}
