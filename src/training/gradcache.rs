//! Gradient caching (GradCache, Gao et al., 2021): a batch of any size in
//! the memory of a chunk.
//!
//! 1. Encode the 2B rows (both dropout views) in chunks of `m` rows with no
//!    tape ([`Encoder::forward`](crate::models::Encoder::forward) with the
//!    step's seed) and keep only the pooled embeddings.
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
use crate::tokenize::{Batch, Encoded};
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
    let chunks: Vec<(usize, usize)> = (0..rows.len())
        .step_by(mini_batch)
        .map(|s| (s, mini_batch.min(rows.len() - s)))
        .collect();
    // Pass 1: embeddings only.
    let mut pooled = Vec::with_capacity(chunks.len());
    for &(start, len) in &chunks {
        let batch = chunk(embedder, &rows, start, len)?;
        let out = embedder.model().encoder.forward(&batch, Some(dropout))?;
        pooled.push(
            embedder
                .sentence_embeddings(&out, &batch.attention_mask)?
                .to_dtype(DType::F32)?
                .detach(),
        );
    }
    let all = Var::from_tensor(&Tensor::cat(&pooled, 0)?)?;
    drop(pooled);
    let (mut g, total) = loss_and_parts(all.as_tensor(), loss, adjust)?;
    let cached = total
        .backward()?
        .remove(all.as_tensor())
        .ok_or_else(|| Error::Invalid("the loss does not depend on the embeddings".into()))?;
    // Pass 2: replay each chunk's masks and back-propagate its share.
    let vars = embedder.model().weights.graph_vars();
    for &(start, len) in &chunks {
        let batch = chunk(embedder, &rows, start, len)?;
        let grads = chunk_backward(embedder, &batch, dropout, &cached.narrow(0, start, len)?)?;
        accumulate(&mut g.grads, grads, vars.values())?;
    }
    Ok(g)
}

/// Rows `start..start + len` of the 2B, keeping their row ids (and so their
/// dropout masks), padded to their own longest.
fn chunk(embedder: &Embedder, rows: &[Encoded], start: usize, len: usize) -> Result<Batch> {
    embedder
        .tokenizer()
        .pad(rows, (start..start + len).collect(), embedder.device())
}

/// The weight gradients of `Σ pooled(batch) ⊙ upstream`.
fn chunk_backward(
    embedder: &Embedder,
    batch: &Batch,
    dropout: DropoutSeed,
    upstream: &Tensor,
) -> Result<GradStore> {
    let (grads, ()) = backward_through_encoder(embedder, batch, dropout, |pooled| {
        Ok(((pooled * upstream)?.sum_all()?, ()))
    })?;
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
