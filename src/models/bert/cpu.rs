//! The BERT encoder for f32 on the CPU, written against plain slices, with a
//! hand-written backward pass.
//!
//! candle's autograd keeps every intermediate of the graph alive, allocates a
//! zeroed gradient for each node before adding into it, and runs bias adds,
//! residuals and dropout as separate passes; on a CPU that overhead cost
//! more than the matrix products themselves. This path computes the same
//! function as [`super::BertModel`]'s candle graph (same arithmetic order,
//! same dropout masks drawn from the same RNG in the same order), keeps only
//! what its backward needs, and writes each weight's gradient once.
//! `tests/cpu_backprop.rs` checks it against the candle graph: outputs and
//! every weight gradient.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

use super::{BertModel, Layer};
use crate::error::{Error, Result};
use crate::kernels::matmul::{Threads, linear, linear_backward};
use crate::kernels::norm::{NormSaved, layer_norm, layer_norm_backward};
use crate::kernels::softmax::{softmax_row, softmax_row_backward};
use crate::kernels::{Mat, matmul};
use crate::models::{EncoderOutput, TrainPass};
use crate::rng::Rng;
use crate::tokenize::Batch;

/// Whether this path can run `model`: f32 weights on the CPU.
pub(super) fn supported(model: &BertModel) -> bool {
    let w = &model.embeddings.word;
    w.device().is_cpu() && w.dtype() == DType::F32
}

/// Parameter tensors in one fixed order: the embeddings' five, then sixteen
/// per layer. Gradients are produced in the same order.
fn params(model: &BertModel) -> Vec<&Tensor> {
    let e = &model.embeddings;
    let mut p = vec![
        &e.word,
        &e.position,
        &e.token_type,
        e.layer_norm.weight(),
        e.layer_norm.bias(),
    ];
    for l in &model.layers {
        let a = &l.attention;
        for lin in [&a.query, &a.key, &a.value, &a.output] {
            p.push(lin.weight());
            p.push(lin.bias().expect("BERT linear layers have biases"));
        }
        p.extend([a.layer_norm.weight(), a.layer_norm.bias()]);
        p.extend([
            l.intermediate.weight(),
            l.intermediate.bias().expect("bias"),
        ]);
        p.extend([l.output.weight(), l.output.bias().expect("bias")]);
        p.extend([l.layer_norm.weight(), l.layer_norm.bias()]);
    }
    p
}

const EMB_PARAMS: usize = 5;
const LAYER_PARAMS: usize = 16;

/// Read access to the data of contiguous f32 CPU tensors for as long as
/// this lives (it holds their storage read locks).
struct Reader<'a> {
    guards: Vec<(candle_core::StorageRef<'a>, &'a Layout)>,
}

impl<'a> Reader<'a> {
    fn new(tensors: &[&'a Tensor]) -> Self {
        Reader {
            guards: tensors.iter().map(|t| t.storage_and_layout()).collect(),
        }
    }

    fn get(&self, i: usize) -> Result<&[f32]> {
        let (storage, layout) = &self.guards[i];
        let Storage::Cpu(CpuStorage::F32(v)) = &**storage else {
            return Err(Error::Invalid("CPU pass: expected f32 CPU tensors".into()));
        };
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| Error::Invalid("CPU pass: expected contiguous tensors".into()))?;
        Ok(&v[a..b])
    }
}

/// One layer's weights as slices, in [`params`] order.
struct LayerW<'a> {
    qkv: [(&'a [f32], &'a [f32]); 3],
    out: (&'a [f32], &'a [f32]),
    ln1: (&'a [f32], &'a [f32]),
    inter: (&'a [f32], &'a [f32]),
    out2: (&'a [f32], &'a [f32]),
    ln2: (&'a [f32], &'a [f32]),
}

fn layer_weights<'a>(r: &'a Reader, l: usize) -> Result<LayerW<'a>> {
    let base = EMB_PARAMS + l * LAYER_PARAMS;
    let pair = |i: usize| -> Result<(&'a [f32], &'a [f32])> {
        Ok((r.get(base + 2 * i)?, r.get(base + 2 * i + 1)?))
    };
    Ok(LayerW {
        qkv: [pair(0)?, pair(1)?, pair(2)?],
        out: pair(3)?,
        ln1: pair(4)?,
        inter: pair(5)?,
        out2: pair(6)?,
        ln2: pair(7)?,
    })
}

#[derive(Clone, Copy)]
struct Dims {
    /// sequences, tokens per sequence, hidden size, heads, head size
    b: usize,
    t: usize,
    h: usize,
    heads: usize,
    hd: usize,
}

impl Dims {
    fn rows(&self) -> usize {
        self.b * self.t
    }
}

/// Which elements a dropout keeps, and the scale of those it keeps.
struct Keep {
    mask: Vec<u8>,
    scale: f32,
}

/// Draws a mask exactly as [`crate::layers::Dropout`] does (same RNG calls,
/// same order), so both paths drop the same elements.
fn draw_keep(n: usize, p: f32, rng: Option<&mut Rng>) -> Option<Keep> {
    let rng = rng?;
    if p <= 0.0 {
        return None;
    }
    if p >= 1.0 {
        return Some(Keep {
            mask: vec![0; n],
            scale: 0.0,
        });
    }
    let keep = 1.0 - p;
    Some(Keep {
        mask: (0..n).map(|_| (rng.next_f32() < keep) as u8).collect(),
        scale: 1.0 / keep,
    })
}

fn dropout_scale(keep: &Keep, i: usize) -> f32 {
    if keep.mask[i] != 0 { keep.scale } else { 0.0 }
}

/// `x = dropout(x) + residual`, in place.
fn dropout_add(x: &mut [f32], keep: Option<&Keep>, residual: &[f32]) {
    const CHUNK: usize = 8192;
    x.par_chunks_mut(CHUNK)
        .zip(residual.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (xs, rs))| {
            for (i, (x, r)) in xs.iter_mut().zip(rs).enumerate() {
                let d = keep.map_or(*x, |k| *x * dropout_scale(k, c * CHUNK + i));
                *x = d + r;
            }
        });
}

/// The gradient through a dropout: `g · mask · scale`.
fn dropout_backward(g: &[f32], keep: Option<&Keep>) -> Vec<f32> {
    let Some(k) = keep else {
        return g.to_vec();
    };
    g.par_iter()
        .enumerate()
        .map(|(i, v)| v * dropout_scale(k, i))
        .collect()
}

struct LayerTape {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities before dropout, `(b, heads, t, t)`.
    probs: Vec<f32>,
    probs_keep: Option<Keep>,
    ctx: Vec<f32>,
    keep1: Option<Keep>,
    ln1: NormSaved,
    /// Output of the attention block (input of the feed-forward block).
    a: Vec<f32>,
    /// Feed-forward pre-activation and activation.
    f: Vec<f32>,
    g: Vec<f32>,
    keep2: Option<Keep>,
    ln2: NormSaved,
}

/// Everything the backward pass reads, besides the hidden states.
struct Tape {
    dims: Dims,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    emb_keep: Option<Keep>,
    emb_ln: NormSaved,
    layers: Vec<LayerTape>,
}

/// Runs the encoder. With `rng`, dropout is on (train mode); with `save`,
/// the tape for [`backward`] is kept. Returns every hidden state,
/// `(b·t, h)` row-major.
fn run(
    model: &BertModel,
    batch: &Batch,
    mut rng: Option<&mut Rng>,
    save: bool,
) -> Result<(Vec<Vec<f32>>, Option<Tape>)> {
    let cfg = &model.config;
    let (b, t) = batch.input_ids.dims2()?;
    let h = cfg.hidden_size;
    let heads = cfg.num_attention_heads;
    let d = Dims {
        b,
        t,
        h,
        heads,
        hd: h / heads,
    };
    let ids = batch.input_ids.flatten_all()?.to_vec1::<u32>()?;
    let type_ids = batch.token_type_ids.flatten_all()?.to_vec1::<u32>()?;
    let mask = batch.attention_mask.flatten_all()?.to_vec1::<u32>()?;
    // Additive key mask, as transformers: 0 for tokens, f32::MIN for padding.
    let mask_bias: Vec<f32> = mask
        .iter()
        .map(|&m| if m != 0 { 0.0 } else { f32::MIN })
        .collect();

    let tensors = params(model);
    let reader = Reader::new(&tensors);
    let e = &model.embeddings;
    let (word, pos, types) = (reader.get(0)?, reader.get(1)?, reader.get(2)?);
    let vocab = word.len() / h;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    if e.position_offset + t > pos.len() / h {
        return Err(Error::Invalid(format!(
            "sequence of {t} tokens is longer than the position table"
        )));
    }
    if let Some(&bad) = type_ids
        .iter()
        .find(|&&i| (i as usize + 1) * h > types.len())
    {
        return Err(Error::Invalid(format!("token type id {bad} out of range")));
    }
    // Word + type, then + position: the candle graph's order of additions.
    let mut emb = vec![0f32; d.rows() * h];
    emb.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
        let w = &word[ids[r] as usize * h..][..h];
        let ty = &types[type_ids[r] as usize * h..][..h];
        let p = &pos[(e.position_offset + r % t) * h..][..h];
        for i in 0..h {
            row[i] = (w[i] + ty[i]) + p[i];
        }
    });
    let mut x = vec![0f32; emb.len()];
    let eps = e.layer_norm.eps() as f32;
    let emb_ln = layer_norm(&emb, reader.get(3)?, reader.get(4)?, eps, &mut x, save);
    drop(emb);
    let emb_keep = draw_keep(x.len(), e.dropout.p(), rng.as_deref_mut());
    if let Some(k) = &emb_keep {
        x.par_iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v *= dropout_scale(k, i));
    }

    let mut hidden = vec![x];
    let mut layers = Vec::new();
    for (l, layer) in model.layers.iter().enumerate() {
        let w = layer_weights(&reader, l)?;
        let x = hidden.last().expect("embedding output");
        let (y, tape) = layer_forward(layer, &w, d, x, &mask_bias, rng.as_deref_mut(), save);
        hidden.push(y);
        layers.extend(tape);
    }
    let tape = save.then(|| Tape {
        dims: d,
        ids,
        type_ids,
        emb_keep,
        emb_ln: emb_ln.expect("saved"),
        layers,
    });
    Ok((hidden, tape))
}

fn layer_forward(
    layer: &Layer,
    w: &LayerW,
    d: Dims,
    x: &[f32],
    mask_bias: &[f32],
    mut rng: Option<&mut Rng>,
    save: bool,
) -> (Vec<f32>, Option<LayerTape>) {
    let n = d.rows();
    let inter = w.inter.1.len();
    let [q, k, v] = w.qkv.map(|(wt, bias)| {
        let mut y = vec![0f32; n * d.h];
        linear(&mut y, x, wt, bias, n);
        y
    });
    let att = &layer.attention;
    let probs_keep = draw_keep(
        d.b * d.heads * d.t * d.t,
        att.probs_dropout.p(),
        rng.as_deref_mut(),
    );
    let (probs, ctx) = attention(d, &q, &k, &v, mask_bias, probs_keep.as_ref());
    let mut z1 = vec![0f32; n * d.h];
    linear(&mut z1, &ctx, w.out.0, w.out.1, n);
    let keep1 = draw_keep(z1.len(), att.hidden_dropout.p(), rng.as_deref_mut());
    dropout_add(&mut z1, keep1.as_ref(), x);
    let mut a = vec![0f32; n * d.h];
    let eps1 = att.layer_norm.eps() as f32;
    let ln1 = layer_norm(&z1, w.ln1.0, w.ln1.1, eps1, &mut a, save);
    drop(z1);

    let mut f = vec![0f32; n * inter];
    linear(&mut f, &a, w.inter.0, w.inter.1, n);
    let mut g = vec![0f32; f.len()];
    layer.activation.forward(&f, &mut g);
    let mut z2 = vec![0f32; n * d.h];
    linear(&mut z2, &g, w.out2.0, w.out2.1, n);
    let keep2 = draw_keep(z2.len(), layer.dropout.p(), rng);
    dropout_add(&mut z2, keep2.as_ref(), &a);
    let mut y = vec![0f32; n * d.h];
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

/// Softmax attention per sequence and head. Returns the probabilities
/// (before dropout) and the context `(b·t, h)`.
fn attention(
    d: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask_bias: &[f32],
    keep: Option<&Keep>,
) -> (Vec<f32>, Vec<f32>) {
    let Dims {
        t, h, heads, hd, ..
    } = d;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut probs = vec![0f32; d.b * heads * t * t];
    let mut ctx = vec![0f32; d.rows() * h];
    ctx.par_chunks_mut(t * h)
        .zip(probs.par_chunks_mut(heads * t * t))
        .enumerate()
        .for_each(|(s, (ctx, probs))| {
            let base = s * t * h;
            let bias = &mask_bias[s * t..][..t];
            let mut dropped = vec![0f32; t * t];
            for head in 0..heads {
                let off = base + head * hd;
                let p = &mut probs[head * t * t..][..t * t];
                matmul(
                    p,
                    t,
                    Mat::strided(&q[off..], t, hd, h),
                    Mat::strided(&k[off..], t, hd, h).t(),
                    false,
                    Threads::Single,
                );
                for row in p.chunks_mut(t) {
                    for (x, b) in row.iter_mut().zip(bias) {
                        *x = *x * scale + b;
                    }
                    softmax_row(row);
                }
                let used: &[f32] = match keep {
                    Some(kp) => {
                        let first = (s * heads + head) * t * t;
                        for (i, (o, pv)) in dropped.iter_mut().zip(p.iter()).enumerate() {
                            *o = pv * dropout_scale(kp, first + i);
                        }
                        &dropped
                    }
                    None => p,
                };
                matmul(
                    &mut ctx[head * hd..],
                    h,
                    Mat::new(used, t, t),
                    Mat::strided(&v[off..], t, hd, h),
                    false,
                    Threads::Single,
                );
            }
        });
    (probs, ctx)
}

/// Gradients of [`attention`] with respect to q, k and v.
fn attention_backward(d: Dims, dctx: &[f32], tape: &LayerTape) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims {
        t, h, heads, hd, ..
    } = d;
    let scale = 1.0 / (hd as f32).sqrt();
    let n = d.rows() * h;
    let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    let (q, k, v) = (&tape.q, &tape.k, &tape.v);
    let keep = tape.probs_keep.as_ref();
    dq.par_chunks_mut(t * h)
        .zip(dk.par_chunks_mut(t * h))
        .zip(dv.par_chunks_mut(t * h))
        .enumerate()
        .for_each(|(s, ((dq, dk), dv))| {
            let base = s * t * h;
            let mut dropped = vec![0f32; t * t];
            let mut dp = vec![0f32; t * t];
            let mut ds = vec![0f32; t * t];
            for head in 0..heads {
                let off = base + head * hd;
                let first = (s * heads + head) * t * t;
                let p = &tape.probs[first..][..t * t];
                let dctx_m = Mat::strided(&dctx[off..], t, hd, h);
                // dP' = dctx · vᵀ, dv = P'ᵀ · dctx (P' = P after dropout).
                matmul(
                    &mut dp,
                    t,
                    dctx_m,
                    Mat::strided(&v[off..], t, hd, h).t(),
                    false,
                    Threads::Single,
                );
                let used: &[f32] = match keep {
                    Some(kp) => {
                        for (i, (o, pv)) in dropped.iter_mut().zip(p).enumerate() {
                            *o = pv * dropout_scale(kp, first + i);
                        }
                        for (i, g) in dp.iter_mut().enumerate() {
                            *g *= dropout_scale(kp, first + i);
                        }
                        &dropped
                    }
                    None => p,
                };
                matmul(
                    &mut dv[head * hd..],
                    h,
                    Mat::new(used, t, t).t(),
                    dctx_m,
                    false,
                    Threads::Single,
                );
                // Through the softmax, then the 1/√d scale of the scores.
                for ((pr, gr), dr) in p.chunks(t).zip(dp.chunks(t)).zip(ds.chunks_mut(t)) {
                    softmax_row_backward(pr, gr, dr);
                    dr.iter_mut().for_each(|x| *x *= scale);
                }
                // dq = dS · k, dk = dSᵀ · q.
                matmul(
                    &mut dq[head * hd..],
                    h,
                    Mat::new(&ds, t, t),
                    Mat::strided(&k[off..], t, hd, h),
                    false,
                    Threads::Single,
                );
                matmul(
                    &mut dk[head * hd..],
                    h,
                    Mat::new(&ds, t, t).t(),
                    Mat::strided(&q[off..], t, hd, h),
                    false,
                    Threads::Single,
                );
            }
        });
    (dq, dk, dv)
}

/// Backward through one layer: adds its weight gradients to `grads` (in
/// [`params`] order) and returns the gradient of its input `x`.
fn layer_backward(
    layer: &Layer,
    w: &LayerW,
    d: Dims,
    x: &[f32],
    dy: &[f32],
    tape: &LayerTape,
    grads: &mut [Vec<f32>],
) -> Vec<f32> {
    let n = d.rows();
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
    let mut da = vec![0f32; n * d.h];
    layer_norm_backward(dy, &tape.ln2, w.ln2.0, &mut da, dg2, db2);
    let dz2 = dropout_backward(&da, tape.keep2.as_ref());
    let mut dg = vec![0f32; tape.g.len()];
    linear_backward(&dz2, &tape.g, w.out2.0, (do2w, do2b), &mut dg, n, false);
    drop(dz2);
    layer.activation.backward_inplace(&tape.f, &mut dg);
    linear_backward(&dg, &tape.a, w.inter.0, (diw, dib), &mut da, n, true);
    drop(dg);

    let mut dx = vec![0f32; n * d.h];
    layer_norm_backward(&da, &tape.ln1, w.ln1.0, &mut dx, dg1, db1);
    drop(da);
    let dz1 = dropout_backward(&dx, tape.keep1.as_ref());
    let mut dctx = vec![0f32; n * d.h];
    linear_backward(&dz1, &tape.ctx, w.out.0, (dow, dob), &mut dctx, n, false);
    drop(dz1);
    let (dq, dk, dv) = attention_backward(d, &dctx, tape);
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

/// A training forward pass: hidden states as variables for the pooling and
/// loss graph, and the tape for the hand-written backward.
pub(super) struct CpuTrainPass<'m> {
    model: &'m BertModel,
    hidden: Vec<Var>,
    output: EncoderOutput,
    tape: Tape,
}

pub(super) fn forward_train<'m>(
    model: &'m BertModel,
    batch: &Batch,
    rng: &mut Rng,
) -> Result<CpuTrainPass<'m>> {
    let (hidden, tape) = run(model, batch, Some(rng), true)?;
    let tape = tape.expect("saved");
    let d = tape.dims;
    let hidden = hidden
        .into_iter()
        .map(|v| {
            Ok(Var::from_tensor(&Tensor::from_vec(
                v,
                (d.b, d.t, d.h),
                &Device::Cpu,
            )?)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let output = EncoderOutput {
        hidden_states: hidden.iter().map(|v| v.as_tensor().clone()).collect(),
    };
    Ok(CpuTrainPass {
        model,
        hidden,
        output,
        tape,
    })
}

/// Inference (or dropout-only) forward without a tape.
pub(super) fn forward(
    model: &BertModel,
    batch: &Batch,
    rng: Option<&mut Rng>,
) -> Result<EncoderOutput> {
    let (b, t) = batch.input_ids.dims2()?;
    let h = model.config.hidden_size;
    let (hidden, _) = run(model, batch, rng, false)?;
    let hidden_states = hidden
        .into_iter()
        .map(|v| Ok(Tensor::from_vec(v, (b, t, h), &Device::Cpu)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(EncoderOutput { hidden_states })
}

impl TrainPass for CpuTrainPass<'_> {
    fn output(&self) -> &EncoderOutput {
        &self.output
    }

    fn backward(self: Box<Self>, grads: &mut GradStore) -> Result<()> {
        let CpuTrainPass {
            model,
            hidden,
            output,
            tape,
        } = *self;
        drop(output);
        let d = tape.dims;
        let n = d.rows() * d.h;
        let tensors = params(model);
        let mut dparams: Vec<Vec<f32>> =
            tensors.iter().map(|t| vec![0f32; t.elem_count()]).collect();
        // Gradients the loss sent to each hidden state (only those it used).
        let mut hidden_grads: Vec<Option<Vec<f32>>> = hidden
            .iter()
            .map(|v| {
                grads
                    .remove(v.as_tensor())
                    .map(|g| g.flatten_all()?.to_vec1::<f32>())
                    .transpose()
            })
            .collect::<std::result::Result<_, _>>()?;
        let hidden: Vec<Tensor> = hidden.into_iter().map(|v| v.into_inner()).collect();
        let states = Reader::new(&hidden.iter().collect::<Vec<_>>());
        let reader = Reader::new(&tensors);
        let mut dx = hidden_grads
            .pop()
            .flatten()
            .unwrap_or_else(|| vec![0f32; n]);
        for (l, layer) in model.layers.iter().enumerate().rev() {
            let w = layer_weights(&reader, l)?;
            let base = EMB_PARAMS + l * LAYER_PARAMS;
            dx = layer_backward(
                layer,
                &w,
                d,
                states.get(l)?,
                &dx,
                &tape.layers[l],
                &mut dparams[base..base + LAYER_PARAMS],
            );
            if let Some(g) = hidden_grads[l].take() {
                dx.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        // Embeddings: dropout, LayerNorm, then scatter into the tables.
        let dln = dropout_backward(&dx, tape.emb_keep.as_ref());
        let mut de = vec![0f32; n];
        let [dword, dpos, dtype, dg, db, ..] = &mut dparams[..] else {
            unreachable!("five embedding parameters")
        };
        layer_norm_backward(&dln, &tape.emb_ln, reader.get(3)?, &mut de, dg, db);
        let (h, offset) = (d.h, model.embeddings.position_offset);
        for (r, row) in de.chunks(h).enumerate() {
            let add = |table: &mut [f32], idx: usize| {
                table[idx * h..][..h]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(a, b)| *a += b);
            };
            add(dword, tape.ids[r] as usize);
            add(dtype, tape.type_ids[r] as usize);
            add(dpos, offset + r % d.t);
        }
        drop(reader);
        for (t, g) in tensors.into_iter().zip(dparams) {
            grads.insert(t, Tensor::from_vec(g, t.shape(), &Device::Cpu)?);
        }
        Ok(())
    }
}
