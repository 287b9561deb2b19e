//! A step's train-mode forward over its rows, pooled, and back into the
//! weights.
//!
//! Where the encoder has a hand-written pass for its device and dtype (f32
//! on the CPU), the rows go through it packed, without padding. Elsewhere
//! (CUDA, Metal, half precision) they go through the candle graph, which
//! pads every row of a pass to the pass's longest: so the rows are encoded
//! in a few passes of similar length ([`GraphSplit`], [`length_groups`]), and a step of short sentences with one long one
//! does not pad them all to the long one. Dropout masks are a function of
//! the row ids (see [`crate::layers::dropout`]), so the split changes no
//! mask: the pooled rows and the gradients are those of one pass, up to
//! rounding.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::inference::Embedder;
use crate::layers::DropoutSeed;
use crate::models::{EncoderOutput, TrainPass};
use crate::tokenize::{Batch, Encoded, length_groups};

/// How the candle graph route splits a step's rows by length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphSplit {
    /// The most passes the rows are split into (1: one pass padded to the
    /// longest row).
    pub max_groups: usize,
    /// What one more pass costs beside its tokens, counted in padded
    /// tokens: [`length_groups`] splits only where the padding saved is
    /// larger.
    pub pass_cost: usize,
}

impl GraphSplit {
    /// The split for `device`: up to 4 passes; an extra pass is worth
    /// 1,024 padded tokens on the CPU (measured to pay at max length 128,
    /// see README "fit") and 4,096 on a GPU. The GPU figure is reasoned,
    /// not measured: there small passes are bound by kernel launches (some
    /// hundreds per bert-base pass, forward and backward), milliseconds in
    /// which the tensor cores would do some thousands of tokens' products;
    /// `scripts/gpu_check.py` times one pass against this split.
    pub fn for_device(device: &Device) -> GraphSplit {
        GraphSplit {
            max_groups: 4,
            pass_cost: if device.is_cpu() { 1024 } else { 4096 },
        }
    }

    /// One pass over all rows.
    pub const ONE_PASS: GraphSplit = GraphSplit {
        max_groups: 1,
        pass_cost: 0,
    };
}

/// The pooled rows of a train-mode forward, and what turns a loss on them
/// into weight gradients.
pub struct TrainForward<'a> {
    /// `(rows, d)` in f32 (losses are computed in f32 whatever the encoder
    /// computes in), in the order the rows were asked for.
    pub pooled: Tensor,
    pass: Option<Box<dyn TrainPass + 'a>>,
}

impl TrainForward<'_> {
    /// The gradient of every weight (and of `pooled`) of the scalar `loss`,
    /// a function of [`TrainForward::pooled`].
    pub fn backward(self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        if let Some(pass) = self.pass {
            pass.backward(&mut grads)?;
        }
        Ok(grads)
    }
}

/// Rows `indices` of `rows` (keeping those row ids, and so their dropout
/// masks) in train mode with `dropout`, through the fastest differentiable
/// route for the encoder's device and dtype (`split` for the graph route).
pub fn train_forward<'a>(
    embedder: &'a Embedder,
    rows: &[Encoded],
    indices: &[usize],
    dropout: DropoutSeed,
    split: GraphSplit,
) -> Result<TrainForward<'a>> {
    let batch = pad(embedder, rows, indices.to_vec())?;
    match embedder.model().encoder.forward_train(&batch, dropout)? {
        Some(pass) => Ok(TrainForward {
            pooled: pooled(embedder, pass.output(), &batch)?,
            pass: Some(pass),
        }),
        None => graph_forward(embedder, rows, indices, dropout, split),
    }
}

/// [`train_forward`] through the candle graph, in passes of similar length
/// as `split` says.
pub fn graph_forward<'a>(
    embedder: &'a Embedder,
    rows: &[Encoded],
    indices: &[usize],
    dropout: DropoutSeed,
    split: GraphSplit,
) -> Result<TrainForward<'a>> {
    let groups = length_groups(rows, indices, split.max_groups, split.pass_cost);
    let mut pieces = Vec::with_capacity(groups.len());
    for group in &groups {
        let batch = pad(embedder, rows, group.clone())?;
        let output = embedder
            .model()
            .encoder
            .forward_graph(&batch, Some(dropout))?;
        pieces.push(pooled(embedder, &output, &batch)?);
    }
    let order = groups.concat();
    let pooled = Tensor::cat(&pieces, 0)?;
    let pooled = if order == indices {
        pooled
    } else {
        let at: HashMap<usize, u32> = order
            .iter()
            .enumerate()
            .map(|(k, &r)| (r, k as u32))
            .collect();
        let back: Vec<u32> = indices.iter().map(|r| at[r]).collect();
        pooled.index_select(&Tensor::new(back, pooled.device())?, 0)?
    };
    Ok(TrainForward { pooled, pass: None })
}

fn pad(embedder: &Embedder, rows: &[Encoded], indices: Vec<usize>) -> Result<Batch> {
    embedder.tokenizer().pad(rows, indices, embedder.device())
}

fn pooled(embedder: &Embedder, output: &EncoderOutput, batch: &Batch) -> Result<Tensor> {
    Ok(embedder
        .sentence_embeddings(output, &batch.attention_mask)?
        .to_dtype(DType::F32)?)
}
