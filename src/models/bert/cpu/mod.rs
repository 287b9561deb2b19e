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

use attention::RelativeBias;
use layer::{LayerCtx, LayerTape, LayerW, layer_backward, layer_forward};
use packing::{Keep, Packing, draw_keep, dropout_add, dropout_backward};

use super::{BertModel, LAYER_ROLES, Layer, site};
use crate::error::{Error, Result};
use crate::kernels::f32_data;
use crate::kernels::matmul::Threads;
use crate::kernels::norm::{NormSaved, layer_norm, layer_norm_backward};
use crate::layers::DropoutSeed;
use crate::models::params::{Params, Part, Role};
use crate::models::{EncoderOutput, TrainPass};
use crate::tokenize::Batch;

/// Whether this path can run `model`: f32 weights on the CPU.
pub(super) fn supported(model: &BertModel) -> bool {
    model
        .params
        .tensors()
        .iter()
        .all(|w| w.device().is_cpu() && w.dtype() == DType::F32)
}

/// Read access to the data of contiguous f32 CPU tensors for as long as
/// this lives (it holds their storage read locks).
struct Reader<'a> {
    guards: Vec<(candle_core::StorageRef<'a>, &'a Layout)>,
}

impl<'a> Reader<'a> {
    fn new(tensors: &'a [Tensor]) -> Self {
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

/// Layer `l`'s weights, found by role in the parameter table.
fn layer_weights<'a>(r: &'a Reader, p: &Params, l: usize) -> Result<LayerW<'a>> {
    let pairs = LAYER_ROLES.map(|role| -> Result<_> {
        Ok((
            r.get(layer_index(p, role(Part::Weight), l))?,
            r.get(layer_index(p, role(Part::Bias), l))?,
        ))
    });
    let [q, k, v, out, ln1, inter, out2, ln2] = pairs;
    Ok(LayerW {
        qkv: [q?, k?, v?],
        out: out?,
        ln1: ln1?,
        inter: inter?,
        out2: out2?,
        ln2: ln2?,
    })
}

/// Position of layer `l`'s parameter with `role` (every post-LN layer has
/// each of [`LAYER_ROLES`] with a bias).
fn layer_index(p: &Params, role: Role, l: usize) -> usize {
    p.index(role, Some(l))
        .unwrap_or_else(|| panic!("the parameter table has no {role:?} in layer {l}"))
}

/// Mutable borrows of the distinct entries `idx` of `v`.
fn pick<const N: usize>(v: &mut [Vec<f32>], idx: [usize; N]) -> [&mut [f32]; N] {
    let mut slots: Vec<Option<&mut Vec<f32>>> = v.iter_mut().map(Some).collect();
    idx.map(|i| slots[i].take().expect("distinct parameters").as_mut_slice())
}

/// The embedding parameters' positions in the parameter table.
struct EmbIndex {
    word: usize,
    position: usize,
    token_type: Option<usize>,
    norm: (usize, usize),
    relative: Option<usize>,
}

impl EmbIndex {
    fn new(p: &Params) -> Self {
        let at = |role| {
            p.index(role, None)
                .expect("the post-LN tables have this parameter")
        };
        EmbIndex {
            word: at(Role::WordEmbeddings),
            position: at(Role::PositionEmbeddings),
            token_type: p.index(Role::TokenTypeEmbeddings, None),
            norm: (
                at(Role::EmbeddingNorm(Part::Weight)),
                at(Role::EmbeddingNorm(Part::Bias)),
            ),
            relative: p.index(Role::RelativeAttentionBias, None),
        }
    }
}

/// Token and token-type ids must index their tables.
fn check_ids(ids: &[u32], type_ids: &[u32], vocab: usize, types: Option<usize>) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    if let Some(types) = types
        && let Some(&bad) = type_ids.iter().find(|&&i| i as usize >= types)
    {
        return Err(Error::Invalid(format!("token type id {bad} out of range")));
    }
    Ok(())
}

/// The relative position bias of a padded length `t`, where the family
/// has one.
fn relative_bias<'a>(
    model: &BertModel,
    reader: &'a Reader,
    ix: &EmbIndex,
    t: usize,
) -> Result<Option<RelativeBias<'a>>> {
    let (Some(buckets), Some(i)) = (&model.arch.relative_attention, ix.relative) else {
        return Ok(None);
    };
    Ok(Some(RelativeBias {
        table: reader.get(i)?,
        offsets: buckets.offsets(t),
        t,
    }))
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
    let arch = &model.arch;
    let (b, t) = batch.input_ids.dims2()?;
    let h = arch.hidden_size;
    let mask = batch.attention_mask.flatten_all()?.to_vec1::<u32>()?;
    if batch.indices.len() != b {
        return Err(Error::Invalid(format!(
            "batch of {b} rows has {} row ids",
            batch.indices.len()
        )));
    }
    let pk = Packing::new(&mask, &batch.indices, t, h, arch.num_heads)?;
    let all_ids = batch.input_ids.flatten_all()?.to_vec1::<u32>()?;
    let all_types = batch.token_type_ids.flatten_all()?.to_vec1::<u32>()?;
    let ids: Vec<u32> = pk.padded_row.iter().map(|&p| all_ids[p]).collect();
    let type_ids: Vec<u32> = pk.padded_row.iter().map(|&p| all_types[p]).collect();

    let p = &model.params;
    let reader = Reader::new(p.tensors());
    let ix = EmbIndex::new(p);
    let (word, pos) = (reader.get(ix.word)?, reader.get(ix.position)?);
    let types = ix.token_type.map(|i| reader.get(i)).transpose()?;
    check_ids(&ids, &type_ids, word.len() / h, types.map(|t| t.len() / h))?;
    if arch.position_offset + t > pos.len() / h {
        return Err(Error::Invalid(format!(
            "sequence of {t} tokens is longer than the position table"
        )));
    }
    // Word + type, then + position: the candle graph's order of additions.
    let mut emb = vec![0f32; pk.rows() * h];
    emb.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
        let w = &word[ids[r] as usize * h..][..h];
        row.copy_from_slice(w);
        if let Some(types) = types {
            let ty = &types[type_ids[r] as usize * h..][..h];
            row.iter_mut().zip(ty).for_each(|(a, b)| *a += b);
        }
        let p = &pos[(arch.position_offset + pk.padded_row[r] % t) * h..][..h];
        row.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    });
    let mut x = vec![0f32; emb.len()];
    let eps = arch.layer_norm_eps as f32;
    let (g, beta) = (reader.get(ix.norm.0)?, reader.get(ix.norm.1)?);
    let emb_ln = layer_norm(&emb, g, beta, eps, &mut x, save);
    drop(emb);
    let emb_keep = draw_keep(
        dropout,
        site::EMBEDDINGS,
        arch.hidden_dropout as f32,
        &pk,
        1,
        h,
    );
    dropout_add(&mut x, emb_keep.as_ref(), &[], &pk);

    let relative = relative_bias(model, &reader, &ix, t)?;
    let mut hidden = vec![x];
    let mut layers = Vec::new();
    for (l, layer) in model.layers.iter().enumerate() {
        let w = layer_weights(&reader, p, l)?;
        let x = hidden.last().expect("embedding output");
        let ctx = LayerCtx {
            pk: &pk,
            relative: relative.as_ref(),
            dropout,
            layer: l,
            eps,
            activation: arch.activation,
        };
        let (y, tape) = layer_forward(layer, &w, &ctx, x, save, threads);
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
    let (t, h) = (batch.input_ids.dim(1)?, model.arch.hidden_size);
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
        let p = &model.params;
        let tensors = p.tensors();
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
        let reader = Reader::new(tensors);
        let ix = EmbIndex::new(p);
        let relative = relative_bias(model, &reader, &ix, pk.t)?;
        let mut drel = relative.as_ref().map(|r| vec![0f32; r.table.len()]);
        let mut dx = hidden_grads
            .pop()
            .flatten()
            .unwrap_or_else(|| vec![0f32; n]);
        for l in (0..model.layers.len()).rev() {
            let w = layer_weights(&reader, p, l)?;
            let ctx = LayerCtx {
                pk,
                relative: relative.as_ref(),
                dropout: None,
                layer: l,
                eps: model.arch.layer_norm_eps as f32,
                activation: model.arch.activation,
            };
            let idx = std::array::from_fn(|k| {
                let part = if k % 2 == 0 { Part::Weight } else { Part::Bias };
                layer_index(p, LAYER_ROLES[k / 2](part), l)
            });
            dx = layer_backward(
                &w,
                &ctx,
                &tape.inputs[l],
                &dx,
                &tape.layers[l],
                (pick(&mut dparams, idx), drel.as_deref_mut()),
            );
            if let Some(g) = hidden_grads[l].take() {
                dx.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            }
        }
        // Embeddings: dropout, LayerNorm, then scatter into the tables.
        let dln = dropout_backward(&dx, tape.emb_keep.as_ref(), pk);
        let mut de = vec![0f32; n];
        let [dg, db] = pick(&mut dparams, [ix.norm.0, ix.norm.1]);
        layer_norm_backward(&dln, &tape.emb_ln, reader.get(ix.norm.0)?, &mut de, dg, db);
        let offset = model.arch.position_offset;
        let scatter = |table: &mut [f32], index: &dyn Fn(usize) -> usize| {
            for (r, row) in de.chunks(h).enumerate() {
                table[index(r) * h..][..h]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(a, b)| *a += b);
            }
        };
        scatter(&mut dparams[ix.word], &|r| tape.ids[r] as usize);
        scatter(&mut dparams[ix.position], &|r| {
            offset + pk.padded_row[r] % pk.t
        });
        if let Some(i) = ix.token_type {
            scatter(&mut dparams[i], &|r| tape.type_ids[r] as usize);
        }
        if let (Some(i), Some(g)) = (ix.relative, drel) {
            dparams[i] = g;
        }
        drop(reader);
        for (t, g) in tensors.iter().zip(dparams) {
            grads.insert(t, Tensor::from_vec(g, t.shape(), &Device::Cpu)?);
        }
        Ok(())
    }
}
