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
use crate::layers::Weights;
use crate::rng::Rng;
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
pub trait Encoder: Send + Sync {
    /// Runs the encoder. `train` turns dropout on, with masks from the
    /// encoder's own seeded RNG. The result is differentiable (candle's
    /// autograd, weights that are variables) only where
    /// [`Encoder::forward_train`] gives `None`; training goes through that.
    fn forward(&self, batch: &Batch, train: bool) -> Result<EncoderOutput>;
    /// A train-mode forward with a hand-written backward, where the encoder
    /// has one for its device and dtype; `None`: use [`Encoder::forward`]
    /// and candle's autograd. Both draw the same dropout masks.
    fn forward_train(&self, _batch: &Batch) -> Result<Option<Box<dyn TrainPass + '_>>> {
        Ok(None)
    }
    fn hidden_size(&self) -> usize;
    fn num_layers(&self) -> usize;
    /// Reseeds the dropout RNG.
    fn set_seed(&self, seed: u64);
    fn rng_state(&self) -> Rng;
    fn set_rng_state(&self, rng: Rng);
}

/// An encoder with its configuration and weights.
pub struct LoadedEncoder {
    pub encoder: bert::BertModel,
    pub config: bert::BertConfig,
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

/// Builds an encoder from a config and weights already in memory.
pub fn build_encoder(
    config: bert::BertConfig,
    weights: Weights,
    trainable: bool,
) -> Result<LoadedEncoder> {
    let weights = if trainable {
        weights.into_trainable()
    } else {
        weights
    };
    let encoder = bert::BertModel::load(&weights.view(), &config)?;
    Ok(LoadedEncoder {
        encoder,
        config,
        weights,
    })
}
