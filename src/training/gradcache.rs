//! Gradient caching (GradCache, Gao et al., 2021): a batch of any size in
//! the memory of a chunk.
//!
//! 1. Encode the 2B rows (both dropout views), sorted by length, in chunks
//!    of `m` rows with no tape
//!    ([`Encoder::forward`](crate::models::Encoder::forward) with the step's
//!    seed) and keep only the pooled embeddings.
//! 2. The loss on all 2B embeddings, and its gradient `G` with respect to
//!    them (candle's autograd on a variable holding the embeddings).
//! 3. Encode each chunk again in train mode with the *same* masks — dropout
//!    is counter-based, a function of (seed, row id, position, column), so
//!    a chunk that keeps its global row ids replays exactly — and
//!    back-propagate the surrogate `Σ pooled ⊙ G[chunk]`; the weight
//!    gradients of the chunks add up to the whole batch's.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::error::{Error, Result};
use crate::inference::Embedder;
use crate::layers::DropoutSeed;
use crate::tokenize::{Batch, Encoded, length_sorted_batches};
use crate::training::forward::GraphSplit;
use crate::training::trainer::{
    Objective, StepGradients, backward_through_encoder, both_views, loss_and_parts,
};

/// The gradients of [`crate::training::trainer::gradients`] (the same
/// loss, the same masks) with the 2B rows encoded `mini_batch` at a time.
pub fn cached_gradients(
    embedder: &Embedder,
    dropout: DropoutSeed,
    texts: &[String],
    loss: &Objective,
    mini_batch: usize,
    adjust: &mut dyn FnMut(Tensor) -> Result<Tensor>,
) -> Result<StepGradients> {
    if mini_batch == 0 {
        return Err(Error::setting("--mini-batch", 0, "must be at least 1"));
    }
    let rows = both_views(embedder, texts)?;
    // Chunks of similar length pad least; the masks follow the row ids, so
    // the order changes nothing else.
    let chunks = length_sorted_batches(&rows, mini_batch);
    // Pass 1: embeddings only.
    let mut pooled = Vec::with_capacity(chunks.len());
    for chunk in &chunks {
        let batch = pad(embedder, &rows, chunk)?;
        let out = embedder.model().encoder.forward(&batch, Some(dropout))?;
        pooled.push(
            embedder
                .sentence_embeddings(&out, &batch.attention_mask)?
                .to_dtype(DType::F32)?
                .detach(),
        );
    }
    // Back to row order (the views' halves) for the loss.
    let sorted = Tensor::cat(&pooled, 0)?;
    drop(pooled);
    let all = Var::from_tensor(&sorted.index_select(&positions(&chunks, sorted.device())?, 0)?)?;
    let (mut g, total) = loss_and_parts(all.as_tensor(), loss, adjust)?;
    let cached = total
        .backward()?
        .remove(all.as_tensor())
        .ok_or_else(|| Error::Invalid("the loss does not depend on the embeddings".into()))?;
    // Pass 2: replay each chunk's masks and back-propagate its share.
    let vars = embedder.model().weights.graph_vars();
    for chunk in &chunks {
        let ids: Vec<u32> = chunk.iter().map(|&r| r as u32).collect();
        let upstream = cached.index_select(&Tensor::new(ids, cached.device())?, 0)?;
        let grads = chunk_backward(embedder, &rows, chunk, dropout, &upstream)?;
        accumulate(&mut g.grads, grads, vars.values())?;
    }
    Ok(g)
}

/// Rows `chunk`, keeping their row ids (and so their dropout masks),
/// padded to their own longest.
fn pad(embedder: &Embedder, rows: &[Encoded], chunk: &[usize]) -> Result<Batch> {
    embedder
        .tokenizer()
        .pad(rows, chunk.to_vec(), embedder.device())
}

/// Where each row id is in the chunks laid end to end: the rows of the
/// chunks' concatenation, in row order.
fn positions(chunks: &[Vec<usize>], device: &candle_core::Device) -> Result<Tensor> {
    let n = chunks.iter().map(Vec::len).sum();
    let mut at = vec![0u32; n];
    for (k, &r) in chunks.iter().flatten().enumerate() {
        at[r] = k as u32;
    }
    Ok(Tensor::new(at, device)?)
}

/// The weight gradients of `Σ pooled(batch) ⊙ upstream`.
fn chunk_backward(
    embedder: &Embedder,
    rows: &[Encoded],
    chunk: &[usize],
    dropout: DropoutSeed,
    upstream: &Tensor,
) -> Result<GradStore> {
    let (grads, ()) = backward_through_encoder(
        embedder,
        rows,
        chunk,
        dropout,
        GraphSplit::for_device(embedder.device()),
        |pooled| Ok(((pooled * upstream)?.sum_all()?, ())),
    )?;
    Ok(grads)
}

/// Adds the weight gradients of `chunk` into `acc` (and nothing else: the
/// chunk's other gradients are dropped with it).
fn accumulate<'a>(
    acc: &mut GradStore,
    mut chunk: GradStore,
    vars: impl Iterator<Item = &'a Var>,
) -> Result<()> {
    for var in vars {
        let Some(g) = chunk.remove(var.as_tensor()) else {
            continue;
        };
        let sum = match acc.remove(var.as_tensor()) {
            Some(a) => (a + g)?,
            None => g,
        };
        acc.insert(var.as_tensor(), sum);
    }
    Ok(())
}
