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

/// The batch with its padding dropped: each sequence's real tokens are
/// consecutive rows of one `(rows, h)` matrix, so the linear layers, norms
/// and activations never run on padding (a batch of book sentences is about
/// 30% padding at length 32). Dropout masks keep their padded indexing, so
/// they match the candle graph's draw for draw.
#[derive(Clone)]
struct Packing {
    /// sequences, padded length, hidden size, heads, head size
    b: usize,
    t: usize,
    h: usize,
    heads: usize,
    hd: usize,
    /// First packed row of each sequence, and the total (b + 1 entries).
    starts: Vec<usize>,
    /// First element of each sequence's `(heads, len, len)` attention
    /// probabilities (b + 1 entries).
    prob_starts: Vec<usize>,
    /// Padded position (`s·t + i`) of each packed row.
    padded_row: Vec<usize>,
}

impl Packing {
    /// From a right-padded attention mask `(b, t)`.
    fn new(mask: &[u32], b: usize, t: usize, h: usize, heads: usize) -> Result<Self> {
        let (mut starts, mut prob_starts, mut padded_row) = (vec![0], vec![0], Vec::new());
        for s in 0..b {
            let row = &mask[s * t..(s + 1) * t];
            let len = row.iter().take_while(|&&m| m != 0).count();
            if row[len..].iter().any(|&m| m != 0) {
                return Err(Error::Invalid(
                    "CPU pass: batches must be right-padded".into(),
                ));
            }
            padded_row.extend((0..len).map(|i| s * t + i));
            starts.push(starts[s] + len);
            prob_starts.push(prob_starts[s] + heads * len * len);
        }
        Ok(Packing {
            b,
            t,
            h,
            heads,
            hd: h / heads,
            starts,
            prob_starts,
            padded_row,
        })
    }

    fn rows(&self) -> usize {
        self.starts[self.b]
    }

    fn len(&self, s: usize) -> usize {
        self.starts[s + 1] - self.starts[s]
    }

    /// Padded `(b, t, width)` data → packed rows.
    fn pack(&self, padded: &[f32], width: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.rows() * width];
        out.par_chunks_mut(width)
            .zip(self.padded_row.par_iter())
            .for_each(|(o, &p)| o.copy_from_slice(&padded[p * width..][..width]));
        out
    }

    /// Packed rows → padded `(b, t, h)`, zeros at padding.
    fn unpack(&self, packed: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.b * self.t * self.h];
        self.unpack_into(packed, &mut out);
        out
    }

    /// Packed rows → `out`, `(b, t, h)` and zero at padding.
    fn unpack_into(&self, packed: &[f32], out: &mut [f32]) {
        let h = self.h;
        out.par_chunks_mut(self.t * h)
            .enumerate()
            .for_each(|(s, seq)| {
                let rows = &packed[self.starts[s] * h..self.starts[s + 1] * h];
                seq[..rows.len()].copy_from_slice(rows);
            });
    }

    /// Splits `buf` into one mutable piece per sequence, `bounds[s]·width`
    /// to `bounds[s + 1]·width`.
    fn split<'a>(
        &self,
        mut buf: &'a mut [f32],
        bounds: &[usize],
        width: usize,
    ) -> Vec<&'a mut [f32]> {
        let mut pieces = Vec::with_capacity(self.b);
        for s in 0..self.b {
            let (piece, rest) = buf.split_at_mut((bounds[s + 1] - bounds[s]) * width);
            pieces.push(piece);
            buf = rest;
        }
        pieces
    }
}

/// Which elements a dropout keeps, and the scale of those it keeps.
struct Keep {
    mask: Vec<u8>,
    scale: f32,
}

impl Keep {
    fn scale_at(&self, i: usize) -> f32 {
        if self.mask[i] != 0 { self.scale } else { 0.0 }
    }
}

/// Draws a mask exactly as [`crate::layers::Dropout`] does (same RNG calls,
/// same order, over the padded shape), so both paths drop the same elements.
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

/// `x = dropout(x) + residual` on packed rows, in place (`residual` may be
/// empty: then no residual is added).
fn dropout_add(x: &mut [f32], keep: Option<&Keep>, residual: &[f32], pk: &Packing) {
    let h = pk.h;
    x.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
        if let Some(k) = keep {
            let first = pk.padded_row[r] * h;
            row.iter_mut()
                .enumerate()
                .for_each(|(c, v)| *v *= k.scale_at(first + c));
        }
        if !residual.is_empty() {
            row.iter_mut()
                .zip(&residual[r * h..(r + 1) * h])
                .for_each(|(v, res)| *v += res);
        }
    });
}

/// The gradient through a dropout on packed rows: `g · mask · scale`.
fn dropout_backward(g: &[f32], keep: Option<&Keep>, pk: &Packing) -> Vec<f32> {
    let mut out = g.to_vec();
    if keep.is_some() {
        dropout_add(&mut out, keep, &[], pk);
    }
    out
}

struct LayerTape {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities before dropout, per sequence `(heads, len, len)`.
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

/// Everything the backward pass reads.
struct Tape {
    pk: Packing,
    /// Packed token and segment ids.
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    emb_keep: Option<Keep>,
    emb_ln: NormSaved,
    /// Packed input of each layer.
    inputs: Vec<Vec<f32>>,
    layers: Vec<LayerTape>,
}

/// Runs the encoder on packed rows. With `rng`, dropout is on (train mode);
/// with `save`, the tape for the backward pass is kept; `threads` says how
/// the large products run. Returns every hidden state, packed.
fn run(
    model: &BertModel,
    batch: &Batch,
    mut rng: Option<&mut Rng>,
    save: bool,
    threads: Threads,
) -> Result<(Vec<Vec<f32>>, Packing, Option<Tape>)> {
    let cfg = &model.config;
    let (b, t) = batch.input_ids.dims2()?;
    let h = cfg.hidden_size;
    let mask = batch.attention_mask.flatten_all()?.to_vec1::<u32>()?;
    let pk = Packing::new(&mask, b, t, h, cfg.num_attention_heads)?;
    let all_ids = batch.input_ids.flatten_all()?.to_vec1::<u32>()?;
    let all_types = batch.token_type_ids.flatten_all()?.to_vec1::<u32>()?;
    let ids: Vec<u32> = pk.padded_row.iter().map(|&p| all_ids[p]).collect();
    let type_ids: Vec<u32> = pk.padded_row.iter().map(|&p| all_types[p]).collect();

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
    let mut emb = vec![0f32; pk.rows() * h];
    emb.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
        let w = &word[ids[r] as usize * h..][..h];
        let ty = &types[type_ids[r] as usize * h..][..h];
        let p = &pos[(e.position_offset + pk.padded_row[r] % t) * h..][..h];
        for i in 0..h {
            row[i] = (w[i] + ty[i]) + p[i];
        }
    });
    let mut x = vec![0f32; emb.len()];
    let eps = e.layer_norm.eps() as f32;
    let emb_ln = layer_norm(&emb, reader.get(3)?, reader.get(4)?, eps, &mut x, save);
    drop(emb);
    let emb_keep = draw_keep(b * t * h, e.dropout.p(), rng.as_deref_mut());
    dropout_add(&mut x, emb_keep.as_ref(), &[], &pk);

    let mut hidden = vec![x];
    let mut layers = Vec::new();
    for (l, layer) in model.layers.iter().enumerate() {
        let w = layer_weights(&reader, l)?;
        let x = hidden.last().expect("embedding output");
        let (y, tape) = layer_forward(layer, &w, &pk, x, rng.as_deref_mut(), save, threads);
        hidden.push(y);
        layers.extend(tape);
    }
    let tape = save.then(|| Tape {
        ids,
        type_ids,
        emb_keep,
        emb_ln: emb_ln.expect("saved"),
        inputs: hidden[..hidden.len() - 1].to_vec(),
        layers,
        pk: pk.clone(),
    });
    Ok((hidden, pk, tape))
}

fn layer_forward(
    layer: &Layer,
    w: &LayerW,
    pk: &Packing,
    x: &[f32],
    mut rng: Option<&mut Rng>,
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
        pk.b * pk.heads * pk.t * pk.t,
        att.probs_dropout.p(),
        rng.as_deref_mut(),
    );
    let (probs, ctx) = attention(pk, &q, &k, &v, probs_keep.as_ref());
    let mut z1 = vec![0f32; n * h];
    linear(&mut z1, &ctx, w.out.0, w.out.1, n, threads);
    let keep1 = draw_keep(pk.b * pk.t * h, att.hidden_dropout.p(), rng.as_deref_mut());
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
    let keep2 = draw_keep(pk.b * pk.t * h, layer.dropout.p(), rng);
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

/// Index of probability `(head, i, j)` of sequence `s` in the padded
/// `(b, heads, t, t)` layout the dropout mask was drawn over.
fn padded_prob(pk: &Packing, s: usize, head: usize, i: usize, j: usize) -> usize {
    ((s * pk.heads + head) * pk.t + i) * pk.t + j
}

/// `P·keep·scale` of one head into `out`, or `p` itself without dropout.
fn dropped_probs<'a>(
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
/// in the packed rows, so no mask is needed). Returns the probabilities
/// (before dropout) and the context.
fn attention(
    pk: &Packing,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: Option<&Keep>,
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
                for row in p.chunks_mut(len) {
                    row.iter_mut().for_each(|x| *x *= scale);
                    softmax_row(row);
                }
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

/// Gradients of [`attention`] with respect to q, k and v.
fn attention_backward(
    pk: &Packing,
    dctx: &[f32],
    tape: &LayerTape,
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
    parts
        .into_par_iter()
        .enumerate()
        .for_each(|(s, ((dq, dk), dv))| {
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
                // Through the softmax, then the 1/√d scale of the scores.
                for ((pr, gr), dr) in p.chunks(len).zip(dp.chunks(len)).zip(ds.chunks_mut(len)) {
                    softmax_row_backward(pr, gr, dr);
                    dr.iter_mut().for_each(|x| *x *= scale);
                }
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
        });
    (dq, dk, dv)
}

/// Backward through one layer: adds its weight gradients to `grads` (in
/// [`params`] order) and returns the gradient of its input `x`.
fn layer_backward(
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

/// A training forward pass: hidden states as variables for the pooling and
/// loss graph, and the tape for the hand-written backward.
pub(super) struct CpuTrainPass<'m> {
    model: &'m BertModel,
    hidden: Vec<Var>,
    output: EncoderOutput,
    tape: Tape,
}

/// Packed hidden states → `(b, t, h)` tensors, zeros at padding.
fn padded_tensors(hidden: Vec<Vec<f32>>, pk: &Packing) -> Result<Vec<Tensor>> {
    hidden
        .into_iter()
        .map(|v| {
            Ok(Tensor::from_vec(
                pk.unpack(&v),
                (pk.b, pk.t, pk.h),
                &Device::Cpu,
            )?)
        })
        .collect()
}

pub(super) fn forward_train<'m>(
    model: &'m BertModel,
    batch: &Batch,
    rng: &mut Rng,
) -> Result<CpuTrainPass<'m>> {
    let (hidden, pk, tape) = run(model, batch, Some(rng), true, Threads::Pool)?;
    let hidden = padded_tensors(hidden, &pk)?
        .iter()
        .map(|t| Ok(Var::from_tensor(t)?))
        .collect::<Result<Vec<_>>>()?;
    let output = EncoderOutput {
        hidden_states: hidden.iter().map(|v| v.as_tensor().clone()).collect(),
    };
    Ok(CpuTrainPass {
        model,
        hidden,
        output,
        tape: tape.expect("saved"),
    })
}

/// Forward without a tape. Without dropout the sequences are split into one
/// group per thread, each run with single-threaded products: independent
/// groups skip the synchronisation inside every product and keep each
/// core's cache to itself (about 10% faster on two cores than splitting
/// each product). Dropout masks follow the whole batch, so a train-mode
/// pass runs as one group.
pub(super) fn forward(
    model: &BertModel,
    batch: &Batch,
    rng: Option<&mut Rng>,
) -> Result<EncoderOutput> {
    let b = batch.input_ids.dim(0)?;
    let groups = rayon::current_num_threads().min(b);
    if rng.is_some() || groups < 2 {
        let (hidden, pk, _) = run(model, batch, rng, false, Threads::Pool)?;
        return Ok(EncoderOutput {
            hidden_states: padded_tensors(hidden, &pk)?,
        });
    }
    // Each group writes its rows of every hidden state in place.
    let (t, h) = (batch.input_ids.dim(1)?, model.config.hidden_size);
    let bounds: Vec<usize> = (0..=groups).map(|g| g * b / groups).collect();
    let mut states = vec![vec![0f32; b * t * h]; model.layers.len() + 1];
    let mut outs: Vec<Vec<&mut [f32]>> = (0..groups).map(|_| Vec::new()).collect();
    for state in &mut states {
        let mut rest = &mut state[..];
        for (g, out) in outs.iter_mut().enumerate() {
            let (mine, tail) = rest.split_at_mut((bounds[g + 1] - bounds[g]) * t * h);
            out.push(mine);
            rest = tail;
        }
    }
    outs.into_par_iter()
        .enumerate()
        .try_for_each(|(g, out)| -> Result<()> {
            let rows = batch.rows(bounds[g], bounds[g + 1] - bounds[g])?;
            let (hidden, pk, _) = run(model, &rows, None, false, Threads::Single)?;
            for (packed, out) in hidden.iter().zip(out) {
                pk.unpack_into(packed, out);
            }
            Ok(())
        })?;
    let hidden_states = states
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
            tape,
            ..
        } = *self;
        let pk = &tape.pk;
        let (h, n) = (pk.h, pk.rows() * pk.h);
        let tensors = params(model);
        let mut dparams: Vec<Vec<f32>> =
            tensors.iter().map(|t| vec![0f32; t.elem_count()]).collect();
        // Gradients the loss sent to each hidden state (only those it used),
        // packed like the activations.
        let mut hidden_grads: Vec<Option<Vec<f32>>> = hidden
            .iter()
            .map(|v| {
                let Some(g) = grads.remove(v.as_tensor()) else {
                    return Ok(None);
                };
                Ok(Some(pk.pack(&g.flatten_all()?.to_vec1::<f32>()?, h)))
            })
            .collect::<Result<_>>()?;
        drop(hidden);
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
                pk,
                &tape.inputs[l],
                &dx,
                &tape.layers[l],
                &mut dparams[base..base + LAYER_PARAMS],
            );
            if let Some(g) = hidden_grads[l].take() {
                dx.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        // Embeddings: dropout, LayerNorm, then scatter into the tables.
        let dln = dropout_backward(&dx, tape.emb_keep.as_ref(), pk);
        let mut de = vec![0f32; n];
        let [dword, dpos, dtype, dg, db, ..] = &mut dparams[..] else {
            unreachable!("five embedding parameters")
        };
        layer_norm_backward(&dln, &tape.emb_ln, reader.get(3)?, &mut de, dg, db);
        let offset = model.embeddings.position_offset;
        for (r, row) in de.chunks(h).enumerate() {
            let add = |table: &mut [f32], idx: usize| {
                table[idx * h..][..h]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(a, b)| *a += b);
            };
            add(dword, tape.ids[r] as usize);
            add(dtype, tape.type_ids[r] as usize);
            add(dpos, offset + pk.padded_row[r] % pk.t);
        }
        drop(reader);
        for (t, g) in tensors.into_iter().zip(dparams) {
            grads.insert(t, Tensor::from_vec(g, t.shape(), &Device::Cpu)?);
        }
        Ok(())
    }
}
