//! Softmax attention per sequence over packed rows, forward and backward.

use rayon::prelude::*;

use super::layer::LayerTape;
use super::packing::{Keep, Packing};
use crate::kernels::matmul::Threads;
use crate::kernels::softmax::{softmax_row, softmax_row_backward};
use crate::kernels::{Mat, matmul};

/// MPNet's relative position bias for one padded length: score `(i, j)`
/// of head `h` gets `table[offsets[j − i + t − 1]·heads + h]`.
pub(super) struct RelativeBias<'a> {
    /// `(buckets, heads)`
    pub(super) table: &'a [f32],
    /// The bucket of each `j − i`, see [`crate::layers::RelativeBuckets::offsets`].
    pub(super) offsets: Vec<u32>,
    pub(super) t: usize,
}

impl RelativeBias<'_> {
    /// Where score `(i, j)` of `head` reads the table.
    fn slot(&self, heads: usize, head: usize, i: usize, j: usize) -> usize {
        self.offsets[j + self.t - 1 - i] as usize * heads + head
    }

    /// Adds the bias to one head's `len × len` scores.
    fn add(&self, heads: usize, head: usize, scores: &mut [f32], len: usize) {
        for (i, row) in scores.chunks_mut(len).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v += self.table[self.slot(heads, head, i, j)];
            }
        }
    }

    /// Adds one head's score gradients into `dtable`.
    fn backward(&self, heads: usize, head: usize, dscores: &[f32], len: usize, dtable: &mut [f32]) {
        for (i, row) in dscores.chunks(len).enumerate() {
            for (j, g) in row.iter().enumerate() {
                dtable[self.slot(heads, head, i, j)] += g;
            }
        }
    }
}

/// Index of probability `(head, i, j)` of sequence `s` in the padded
/// `(b, heads, t, t)` layout the dropout mask was drawn over.
pub(super) fn padded_prob(pk: &Packing, s: usize, head: usize, i: usize, j: usize) -> usize {
    ((s * pk.heads + head) * pk.t + i) * pk.t + j
}

/// `P·keep·scale` of one head into `out`, or `p` itself without dropout.
pub(super) fn dropped_probs<'a>(
    pk: &Packing,
    s: usize,
    head: usize,
    p: &'a [f32],
    keep: Option<&Keep>,
    out: &'a mut [f32],
) -> &'a [f32] {
    let Some(k) = keep else { return p };
    let len = pk.len(s);
    for i in 0..len {
        let first = padded_prob(pk, s, head, i, 0);
        for j in 0..len {
            out[i * len + j] = p[i * len + j] * k.scale_at(first + j);
        }
    }
    out
}

/// Softmax attention of each sequence over its real tokens (padding is not
/// in the packed rows, so no mask is needed), with the relative position
/// bias added to the scaled scores where the family has one. Returns the
/// probabilities (before dropout) and the context.
pub(super) fn attention(
    pk: &Packing,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: Option<&Keep>,
    relative: Option<&RelativeBias>,
) -> (Vec<f32>, Vec<f32>) {
    let (h, heads, hd) = (pk.h, pk.heads, pk.hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut probs = vec![0f32; pk.prob_starts[pk.b]];
    let mut ctx = vec![0f32; pk.rows() * h];
    let ctx_parts = pk.split(&mut ctx, &pk.starts, h);
    let prob_parts = pk.split(&mut probs, &pk.prob_starts, 1);
    ctx_parts
        .into_par_iter()
        .zip(prob_parts)
        .enumerate()
        .for_each(|(s, (ctx, probs))| {
            let len = pk.len(s);
            let base = pk.starts[s] * h;
            let mut dropped = vec![0f32; len * len];
            for head in 0..heads {
                let off = base + head * hd;
                let p = &mut probs[head * len * len..][..len * len];
                matmul(
                    p,
                    len,
                    Mat::strided(&q[off..], len, hd, h),
                    Mat::strided(&k[off..], len, hd, h).t(),
                    false,
                    Threads::Single,
                );
                p.iter_mut().for_each(|x| *x *= scale);
                if let Some(rel) = relative {
                    rel.add(heads, head, p, len);
                }
                p.chunks_mut(len).for_each(softmax_row);
                let used = dropped_probs(pk, s, head, p, keep, &mut dropped);
                matmul(
                    &mut ctx[head * hd..],
                    h,
                    Mat::new(used, len, len),
                    Mat::strided(&v[off..], len, hd, h),
                    false,
                    Threads::Single,
                );
            }
        });
    (probs, ctx)
}

/// Gradients of [`attention`] with respect to q, k and v; the relative
/// position bias's are added to `drel`.
pub(super) fn attention_backward(
    pk: &Packing,
    dctx: &[f32],
    tape: &LayerTape,
    relative: Option<&RelativeBias>,
    drel: Option<&mut [f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (h, heads, hd) = (pk.h, pk.heads, pk.hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let n = pk.rows() * h;
    let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    let (q, k, v) = (&tape.q, &tape.k, &tape.v);
    let keep = tape.probs_keep.as_ref();
    let parts = pk
        .split(&mut dq, &pk.starts, h)
        .into_iter()
        .zip(pk.split(&mut dk, &pk.starts, h))
        .zip(pk.split(&mut dv, &pk.starts, h))
        .collect::<Vec<_>>();
    let rel_len = relative.map_or(0, |r| r.table.len());
    let drel_parts: Vec<Vec<f32>> = parts
        .into_par_iter()
        .enumerate()
        .map(|(s, ((dq, dk), dv))| {
            let mut drel = vec![0f32; rel_len];
            let len = pk.len(s);
            let base = pk.starts[s] * h;
            let mut dropped = vec![0f32; len * len];
            let mut dp = vec![0f32; len * len];
            let mut ds = vec![0f32; len * len];
            for head in 0..heads {
                let off = base + head * hd;
                let p = &tape.probs[pk.prob_starts[s] + head * len * len..][..len * len];
                let dctx_m = Mat::strided(&dctx[off..], len, hd, h);
                // dP' = dctx · vᵀ and dv = P'ᵀ · dctx, with P' = P after
                // dropout; then dP = dP' · keep · scale.
                matmul(
                    &mut dp,
                    len,
                    dctx_m,
                    Mat::strided(&v[off..], len, hd, h).t(),
                    false,
                    Threads::Single,
                );
                let used = dropped_probs(pk, s, head, p, keep, &mut dropped);
                matmul(
                    &mut dv[head * hd..],
                    h,
                    Mat::new(used, len, len).t(),
                    dctx_m,
                    false,
                    Threads::Single,
                );
                if let Some(kp) = keep {
                    for i in 0..len {
                        let first = padded_prob(pk, s, head, i, 0);
                        for j in 0..len {
                            dp[i * len + j] *= kp.scale_at(first + j);
                        }
                    }
                }
                // Through the softmax (the bias's gradient), then the 1/√d
                // scale of the scores.
                for ((pr, gr), dr) in p.chunks(len).zip(dp.chunks(len)).zip(ds.chunks_mut(len)) {
                    softmax_row_backward(pr, gr, dr);
                }
                if let Some(rel) = relative {
                    rel.backward(heads, head, &ds, len, &mut drel);
                }
                ds.iter_mut().for_each(|x| *x *= scale);
                // dq = dS · k, dk = dSᵀ · q.
                matmul(
                    &mut dq[head * hd..],
                    h,
                    Mat::new(&ds, len, len),
                    Mat::strided(&k[off..], len, hd, h),
                    false,
                    Threads::Single,
                );
                matmul(
                    &mut dk[head * hd..],
                    h,
                    Mat::new(&ds, len, len).t(),
                    Mat::strided(&q[off..], len, hd, h),
                    false,
                    Threads::Single,
                );
            }
            drel
        })
        .collect();
    if let Some(drel) = drel {
        for part in drel_parts {
            drel.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
    }
    (dq, dk, dv)
}
