//! Encoders and how to find and load them.
//!
//! `files` resolves `--model` to local files (via `hub` for Hub ids),
//! `sbert` reads the sentence-transformers settings beside the weights, and
//! each architecture (only `bert` for now) has one config struct and one
//! `load(vb, &config)`. The rest of the crate talks to [`Encoder`].

pub mod bert;
pub mod files;
pub mod hub;
pub mod sbert;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::layers::{DropoutSeed, Weights};
use crate::tokenize::Batch;

pub use files::{ModelFiles, ModelSource};

/// Hidden states of every layer: index 0 is the embedding output, the last
/// is the encoder output. Each is `(batch, seq, hidden)`.
pub struct EncoderOutput {
    pub hidden_states: Vec<Tensor>,
}

impl EncoderOutput {
    pub fn last(&self) -> &Tensor {
        self.hidden_states
            .last()
            .expect("at least the embedding output")
    }
}

/// A training forward pass whose backward the encoder computes itself.
pub trait TrainPass {
    /// Hidden states for pooling and losses: variables whose gradients the
    /// loss's backward leaves in its [`GradStore`].
    fn output(&self) -> &EncoderOutput;
    /// Takes the hidden states' gradients out of `grads` and adds the
    /// gradient of every weight.
    fn backward(self: Box<Self>, grads: &mut GradStore) -> Result<()>;
}

/// What the rest of embedtune needs from a transformer encoder.
///
/// Train mode takes a [`DropoutSeed`] (`None`: eval mode) from which every
/// dropout mask is computed (counter-based, see [`crate::layers::dropout`]),
/// so an encoder holds no mutable state: one encoder can serve any number
/// of threads at once, and whoever trains owns (and checkpoints) the RNG
/// that seeds each pass.
pub trait Encoder: Send + Sync {
    /// The fastest forward pass for the encoder's device and dtype; not
    /// necessarily differentiable.
    fn forward(&self, batch: &Batch, dropout: Option<DropoutSeed>) -> Result<EncoderOutput>;
    /// The encoder as a candle graph: differentiable through candle's
    /// autograd when the weights are variables. Training uses it where
    /// [`Encoder::forward_train`] gives `None`; tests use it as the
    /// reference for the faster passes.
    fn forward_graph(&self, batch: &Batch, dropout: Option<DropoutSeed>) -> Result<EncoderOutput>;
    /// A train-mode forward with a hand-written backward, where the encoder
    /// has one for its device and dtype; `None`: use
    /// [`Encoder::forward_graph`] and candle's autograd. Both compute the
    /// same dropout masks from `dropout`.
    fn forward_train(
        &self,
        _batch: &Batch,
        _dropout: DropoutSeed,
    ) -> Result<Option<Box<dyn TrainPass + '_>>> {
        Ok(None)
    }
    fn hidden_size(&self) -> usize;
    /// Transformer layers (hidden states are one more: the embeddings).
    fn num_layers(&self) -> usize;
    /// The longest input (in tokens) the position table allows.
    fn max_input_len(&self) -> usize;
    /// The id batches are padded with.
    fn pad_token_id(&self) -> u32;
}

/// An encoder with its weights.
pub struct LoadedEncoder {
    pub encoder: Box<dyn Encoder>,
    /// Holds the variables of a trainable load and the original weight names.
    pub weights: Weights,
}

/// Loads the encoder of `files`. A `trainable` load makes every weight a
/// variable (see [`Weights::varmap`]); an immutable one tracks no gradients.
pub fn load_encoder(
    files: &ModelFiles,
    dtype: DType,
    device: &Device,
    trainable: bool,
) -> Result<LoadedEncoder> {
    let config = bert::BertConfig::from_file(&files.config)?;
    let weights = Weights::load(&files.weights, &config.weight_prefixes(), dtype, device)?;
    build_encoder(config, weights, trainable)
}

/// Refuses a checkpoint with weights for more layers than the config
/// declares: they would be silently ignored.
fn check_layer_weights(weights: &Weights, layers: usize) -> Result<()> {
    let deepest = weights
        .names()
        .filter_map(|n| {
            n.strip_prefix("encoder.layer.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max();
    match deepest {
        Some(k) if k >= layers => Err(crate::error::Error::Weight(format!(
            "the checkpoint has weights for {} layers (up to encoder.layer.{k}) but config.json says num_hidden_layers = {layers}; the rest would be ignored (fix num_hidden_layers)",
            k + 1
        ))),
        _ => Ok(()),
    }
}

/// Builds an encoder from a config and weights already in memory.
pub fn build_encoder(
    config: bert::BertConfig,
    weights: Weights,
    trainable: bool,
) -> Result<LoadedEncoder> {
    check_layer_weights(&weights, config.num_hidden_layers)?;
    let weights = if trainable {
        weights.into_trainable()
    } else {
        weights
    };
    let encoder = Box::new(bert::BertModel::load(&weights.view(), &config)?);
    Ok(LoadedEncoder { encoder, weights })
}
