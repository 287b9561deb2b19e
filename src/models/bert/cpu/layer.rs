//! One encoder layer (attention block, feed-forward block), forward and
//! backward, over packed rows.

use super::Layer;
use super::attention::{attention, attention_backward};
use super::packing::{Keep, Packing, draw_keep, dropout_add, dropout_backward};
use crate::kernels::matmul::{Threads, linear, linear_backward};
use crate::kernels::norm::{NormSaved, layer_norm, layer_norm_backward};
use crate::layers::DropoutSeed;
use crate::models::bert::site;

/// One layer's weights as slices, in the order of `params`.
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
    pk: &Packing,
    x: &[f32],
    (dropout, l): (Option<DropoutSeed>, usize),
    save: bool,
    threads: Threads,
) -> (Vec<f32>, Option<LayerTape>) {
    let (n, h) = (pk.rows(), pk.h);
    let inter = w.inter.1.len();
    let [q, k, v] = w.qkv.map(|(wt, bias)| {
        let mut y = vec![0f32; n * h];
        linear(&mut y, x, wt, bias, n, threads);
        y
    });
    let att = &layer.attention;
    let probs_keep = draw_keep(
        dropout,
        site::probs(l),
        att.probs_dropout.p(),
        pk,
        pk.heads,
        pk.t,
    );
    let (probs, ctx) = attention(pk, &q, &k, &v, probs_keep.as_ref());
    let mut z1 = vec![0f32; n * h];
    linear(&mut z1, &ctx, w.out.0, w.out.1, n, threads);
    let p1 = att.hidden_dropout.p();
    let keep1 = draw_keep(dropout, site::attention_output(l), p1, pk, 1, h);
    dropout_add(&mut z1, keep1.as_ref(), x, pk);
    let mut a = vec![0f32; n * h];
    let eps1 = att.layer_norm.eps() as f32;
    let ln1 = layer_norm(&z1, w.ln1.0, w.ln1.1, eps1, &mut a, save);
    drop(z1);

    let mut f = vec![0f32; n * inter];
    linear(&mut f, &a, w.inter.0, w.inter.1, n, threads);
    let mut g = vec![0f32; f.len()];
    layer.activation.forward(&f, &mut g);
    let mut z2 = vec![0f32; n * h];
    linear(&mut z2, &g, w.out2.0, w.out2.1, n, threads);
    let keep2 = draw_keep(dropout, site::ffn_output(l), layer.dropout.p(), pk, 1, h);
    dropout_add(&mut z2, keep2.as_ref(), &a, pk);
    let mut y = vec![0f32; n * h];
    let eps2 = layer.layer_norm.eps() as f32;
    let ln2 = layer_norm(&z2, w.ln2.0, w.ln2.1, eps2, &mut y, save);
    let tape = save.then(|| LayerTape {
        q,
        k,
        v,
        probs,
        probs_keep,
        ctx,
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

/// Backward through one layer: adds its weight gradients to `grads` (in
/// the order of `params`) and returns the gradient of its input `x`.
pub(super) fn layer_backward(
    layer: &Layer,
    w: &LayerW,
    pk: &Packing,
    x: &[f32],
    dy: &[f32],
    tape: &LayerTape,
    grads: &mut [Vec<f32>],
) -> Vec<f32> {
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
    ] = grads
    else {
        unreachable!("sixteen gradients per layer")
    };
    // Output LayerNorm, then the residual splits the gradient.
    let mut da = vec![0f32; n * pk.h];
    layer_norm_backward(dy, &tape.ln2, w.ln2.0, &mut da, dg2, db2);
    let dz2 = dropout_backward(&da, tape.keep2.as_ref(), pk);
    let mut dg = vec![0f32; tape.g.len()];
    linear_backward(&dz2, &tape.g, w.out2.0, (do2w, do2b), &mut dg, n, false);
    drop(dz2);
    layer.activation.backward_inplace(&tape.f, &mut dg);
    linear_backward(&dg, &tape.a, w.inter.0, (diw, dib), &mut da, n, true);
    drop(dg);

    let mut dx = vec![0f32; n * pk.h];
    layer_norm_backward(&da, &tape.ln1, w.ln1.0, &mut dx, dg1, db1);
    drop(da);
    let dz1 = dropout_backward(&dx, tape.keep1.as_ref(), pk);
    let mut dctx = vec![0f32; n * pk.h];
    linear_backward(&dz1, &tape.ctx, w.out.0, (dow, dob), &mut dctx, n, false);
    drop(dz1);
    let (dq, dk, dv) = attention_backward(pk, &dctx, tape);
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
