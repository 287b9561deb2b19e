//! The BERT encoder for f32 on the CPU, written against plain slices, with a
//! hand-written backward pass.
//!
//! candle's autograd keeps every intermediate of the graph alive, allocates a
//! zeroed gradient for each node before adding into it, and runs bias adds,
//! residuals and dropout as separate passes; on a CPU that overhead cost
//! more than the matrix products themselves. This path computes the same
//! function as [`super::BertModel`]'s candle graph (same arithmetic order,
//! same dropout masks drawn from the same RNG in the same order), keeps only
//! what its backward needs, and writes each weight's gradient once. It runs
//! on packed rows without padding (`packing`); `layer` and `attention` hold
//! the per-layer forward and backward. `tests/encoder_training.rs` checks it
//! against the candle graph: dropout masks, outputs and every weight
//! gradient.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

mod attention;
mod layer;
mod packing;

use layer::{LayerTape, LayerW, layer_backward, layer_forward};
use packing::{Keep, Packing, draw_keep, dropout_add, dropout_backward};

use super::{BertModel, Layer, site};
use crate::error::{Error, Result};
use crate::kernels::f32_data;
use crate::kernels::matmul::Threads;
use crate::kernels::norm::{NormSaved, layer_norm, layer_norm_backward};
use crate::layers::DropoutSeed;
use crate::models::{EncoderOutput, TrainPass};
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
        let Storage::Cpu(s) = &**storage else {
            return Err(Error::Invalid("CPU pass: expected CPU tensors".into()));
        };
        Ok(f32_data(s, layout, "CPU pass")?)
    }
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

/// Everything the backward pass reads.
struct Tape {
    pk: Packing,
    /// Packed token and segment ids.
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    emb_keep: Option<Keep>,
    emb_ln: NormSaved,
    /// Packed input of each layer (filled by [`forward_train`] from the
    /// hidden states, which [`run`] returns).
    inputs: Vec<Vec<f32>>,
    layers: Vec<LayerTape>,
}

/// Runs the encoder on packed rows. With `dropout`, dropout is on (train mode);
/// with `save`, the tape for the backward pass is kept; `threads` says how
/// the large products run. Returns every hidden state, packed.
fn run(
    model: &BertModel,
    batch: &Batch,
    dropout: Option<DropoutSeed>,
    save: bool,
    threads: Threads,
) -> Result<(Vec<Vec<f32>>, Packing, Option<Tape>)> {
    let cfg = &model.config;
    let (b, t) = batch.input_ids.dims2()?;
    let h = cfg.hidden_size;
    let mask = batch.attention_mask.flatten_all()?.to_vec1::<u32>()?;
    if batch.indices.len() != b {
        return Err(Error::Invalid(format!(
            "batch of {b} rows has {} row ids",
            batch.indices.len()
        )));
    }
    let pk = Packing::new(&mask, &batch.indices, t, h, cfg.num_attention_heads)?;
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
    let emb_keep = draw_keep(dropout, site::EMBEDDINGS, e.dropout.p(), &pk, 1, h);
    dropout_add(&mut x, emb_keep.as_ref(), &[], &pk);

    let mut hidden = vec![x];
    let mut layers = Vec::new();
    for (l, layer) in model.layers.iter().enumerate() {
        let w = layer_weights(&reader, l)?;
        let x = hidden.last().expect("embedding output");
        let (y, tape) = layer_forward(layer, &w, &pk, x, (dropout, l), save, threads);
        hidden.push(y);
        layers.extend(tape);
    }
    let tape = save.then(|| Tape {
        ids,
        type_ids,
        emb_keep,
        emb_ln: emb_ln.expect("saved"),
        inputs: Vec::new(),
        layers,
        pk: pk.clone(),
    });
    Ok((hidden, pk, tape))
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
    dropout: DropoutSeed,
) -> Result<CpuTrainPass<'m>> {
    let (mut packed, pk, tape) = run(model, batch, Some(dropout), true, Threads::Pool)?;
    let hidden = packed
        .iter()
        .map(|v| {
            Ok(Var::from_vec(
                pk.unpack(v),
                (pk.b, pk.t, pk.h),
                &Device::Cpu,
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let output = EncoderOutput {
        hidden_states: hidden.iter().map(|v| v.as_tensor().clone()).collect(),
    };
    let mut tape = tape.expect("saved");
    // Layer l's input is hidden state l; the last one feeds no layer.
    packed.pop();
    tape.inputs = packed;
    Ok(CpuTrainPass {
        model,
        hidden,
        output,
        tape,
    })
}

/// Forward without a tape. Without dropout the sequences are split into one
/// group per thread, each run with single-threaded products: independent
/// groups skip the synchronisation inside every product and keep each
/// core's cache to itself (about 10% faster on two cores than splitting
/// each product). A train-mode pass runs as one group too (the masks would
/// allow groups; training takes [`forward_train`]).
pub(super) fn forward(
    model: &BertModel,
    batch: &Batch,
    dropout: Option<DropoutSeed>,
) -> Result<EncoderOutput> {
    let b = batch.input_ids.dim(0)?;
    let groups = rayon::current_num_threads().min(b);
    if dropout.is_some() || groups < 2 {
        let (hidden, pk, _) = run(model, batch, dropout, false, Threads::Pool)?;
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
