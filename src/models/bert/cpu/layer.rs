//! One encoder layer (attention block, feed-forward block), forward and
//! backward, over packed rows.

use super::Layer;
use super::attention::{RelativeBias, attention, attention_backward};
use super::packing::{Keep, Packing, draw_keep, dropout_add, dropout_backward};
use crate::kernels::activation::Activation;
use crate::kernels::matmul::{Threads, linear, linear_backward};
use crate::kernels::norm::{NormSaved, layer_norm, layer_norm_backward};
use crate::layers::DropoutSeed;
use crate::models::bert::site;

/// What every layer of one pass shares.
pub(super) struct LayerCtx<'a> {
    pub(super) pk: &'a Packing,
    pub(super) relative: Option<&'a RelativeBias<'a>>,
    /// Train mode's dropout seed (the backward pass reads the tape instead).
    pub(super) dropout: Option<DropoutSeed>,
    pub(super) layer: usize,
    pub(super) eps: f32,
    pub(super) activation: Activation,
}

/// One layer's weights as slices, by [`super::LAYER_ROLES`].
pub(super) struct LayerW<'a> {
    pub(super) qkv: [(&'a [f32], &'a [f32]); 3],
    pub(super) out: (&'a [f32], &'a [f32]),
    pub(super) ln1: (&'a [f32], &'a [f32]),
    pub(super) inter: (&'a [f32], &'a [f32]),
    pub(super) out2: (&'a [f32], &'a [f32]),
    pub(super) ln2: (&'a [f32], &'a [f32]),
}

pub(super) struct LayerTape {
    pub(super) q: Vec<f32>,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    /// Attention probabilities before dropout, per sequence `(heads, len, len)`.
    pub(super) probs: Vec<f32>,
    pub(super) probs_keep: Option<Keep>,
    pub(super) ctx: Vec<f32>,
    pub(super) keep1: Option<Keep>,
    pub(super) ln1: NormSaved,
    /// Output of the attention block (input of the feed-forward block).
    pub(super) a: Vec<f32>,
    /// Feed-forward pre-activation and activation.
    pub(super) f: Vec<f32>,
    pub(super) g: Vec<f32>,
    pub(super) keep2: Option<Keep>,
    pub(super) ln2: NormSaved,
}

pub(super) fn layer_forward(
    layer: &Layer,
    w: &LayerW,
    ctx: &LayerCtx,
    x: &[f32],
    save: bool,
    threads: Threads,
) -> (Vec<f32>, Option<LayerTape>) {
    let (pk, dropout, l) = (ctx.pk, ctx.dropout, ctx.layer);
    let (n, h) = (pk.rows(), pk.h);
    let inter = w.inter.1.len();
    let [q, k, v] = w.qkv.map(|(wt, bias)| {
        let mut y = vec![0f32; n * h];
        linear(&mut y, x, wt, bias, n, threads);
        y
    });
    let p0 = layer.probs_dropout.p();
    let probs_keep = draw_keep(dropout, site::probs(l), p0, pk, pk.heads, pk.t);
    let (probs, context) = attention(pk, &q, &k, &v, probs_keep.as_ref(), ctx.relative);
    let mut z1 = vec![0f32; n * h];
    linear(&mut z1, &context, w.out.0, w.out.1, n, threads);
    let p1 = layer.attention_dropout.p();
    let keep1 = draw_keep(dropout, site::attention_output(l), p1, pk, 1, h);
    dropout_add(&mut z1, keep1.as_ref(), x, pk);
    let mut a = vec![0f32; n * h];
    let ln1 = layer_norm(&z1, w.ln1.0, w.ln1.1, ctx.eps, &mut a, save);
    drop(z1);

    let mut f = vec![0f32; n * inter];
    linear(&mut f, &a, w.inter.0, w.inter.1, n, threads);
    let mut g = vec![0f32; f.len()];
    ctx.activation.forward(&f, &mut g);
    let mut z2 = vec![0f32; n * h];
    linear(&mut z2, &g, w.out2.0, w.out2.1, n, threads);
    let p2 = layer.ffn_dropout.p();
    let keep2 = draw_keep(dropout, site::ffn_output(l), p2, pk, 1, h);
    dropout_add(&mut z2, keep2.as_ref(), &a, pk);
    let mut y = vec![0f32; n * h];
    let ln2 = layer_norm(&z2, w.ln2.0, w.ln2.1, ctx.eps, &mut y, save);
    let tape = save.then(|| LayerTape {
        q,
        k,
        v,
        probs,
        probs_keep,
        ctx: context,
        keep1,
        ln1: ln1.expect("saved"),
        a,
        f,
        g,
        keep2,
        ln2: ln2.expect("saved"),
    });
    (y, tape)
}

/// Backward through one layer: adds its weight gradients to `grads` (by
/// [`super::LAYER_ROLES`], weight then bias) and the relative position
/// bias's to `drel`, and returns the gradient of its input `x`.
pub(super) fn layer_backward(
    w: &LayerW,
    ctx: &LayerCtx,
    x: &[f32],
    dy: &[f32],
    tape: &LayerTape,
    (grads, drel): ([&mut [f32]; 16], Option<&mut [f32]>),
) -> Vec<f32> {
    let pk = ctx.pk;
    let n = pk.rows();
    let [
        dqw,
        dqb,
        dkw,
        dkb,
        dvw,
        dvb,
        dow,
        dob,
        dg1,
        db1,
        diw,
        dib,
        do2w,
        do2b,
        dg2,
        db2,
    ] = grads;
    // Output LayerNorm, then the residual splits the gradient.
    let mut da = vec![0f32; n * pk.h];
    layer_norm_backward(dy, &tape.ln2, w.ln2.0, &mut da, dg2, db2);
    let dz2 = dropout_backward(&da, tape.keep2.as_ref(), pk);
    let mut dg = vec![0f32; tape.g.len()];
    linear_backward(&dz2, &tape.g, w.out2.0, (do2w, do2b), &mut dg, n, false);
    drop(dz2);
    ctx.activation.backward_inplace(&tape.f, &mut dg);
    linear_backward(&dg, &tape.a, w.inter.0, (diw, dib), &mut da, n, true);
    drop(dg);

    let mut dx = vec![0f32; n * pk.h];
    layer_norm_backward(&da, &tape.ln1, w.ln1.0, &mut dx, dg1, db1);
    drop(da);
    let dz1 = dropout_backward(&dx, tape.keep1.as_ref(), pk);
    let mut dctx = vec![0f32; n * pk.h];
    linear_backward(&dz1, &tape.ctx, w.out.0, (dow, dob), &mut dctx, n, false);
    drop(dz1);
    let (dq, dk, dv) = attention_backward(pk, &dctx, tape, ctx.relative, drel);
    drop(dctx);
    for ((dproj, (wt, _)), (dw, db)) in
        [dq, dk, dv]
            .iter()
            .zip(&w.qkv)
            .zip([(dqw, dqb), (dkw, dkb), (dvw, dvb)])
    {
        linear_backward(dproj, x, wt, (dw, db), &mut dx, n, true);
    }
    dx
}
