//! Encoders and how to find and load them.
//!
//! `files` resolves `--model` to local files (via `hub` for Hub ids),
//! `sbert` reads the sentence-transformers settings beside the weights.
//! Each family has its folder: a config struct and a parameter table
//! ([`params`]); `bert` holds the post-LayerNorm encoder that BERT,
//! RoBERTa, XLM-R, CamemBERT, DistilBERT and MPNet share, `modernbert` its
//! own. [`ModelConfig`] is the one dispatch point from `model_type` to a
//! family. The rest of the crate talks to [`Encoder`].

pub mod bert;
pub mod distilbert;
pub mod files;
pub mod hub;
pub mod modernbert;
pub mod mpnet;
pub mod params;
pub mod sbert;

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::layers::{DropoutSeed, Weights, WeightsView};
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

/// A model's `config.json`, by family (`model_type`).
#[derive(Debug, Clone)]
pub enum ModelConfig {
    /// `bert`, `roberta`, `xlm-roberta`, `camembert`.
    Bert(bert::BertConfig),
    DistilBert(distilbert::DistilBertConfig),
    MPNet(mpnet::MPNetConfig),
    ModernBert(modernbert::ModernBertConfig),
}

/// The `model_type` values embedtune supports.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "distilbert",
    "mpnet",
    "modernbert",
];

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::source::read_to_string(path)?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_value(value).map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses a `config.json` value by its `model_type` (`bert` when
    /// absent) and checks it.
    pub fn from_value(value: serde_json::Value) -> std::result::Result<Self, String> {
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("bert")
            .to_string();
        fn parse<T: serde::de::DeserializeOwned>(
            value: serde_json::Value,
            family: &str,
        ) -> std::result::Result<T, String> {
            serde_json::from_value(value).map_err(|e| format!("not a {family} config: {e}"))
        }
        let config = match model_type.as_str() {
            "bert" | "roberta" | "xlm-roberta" | "camembert" => {
                let mut c: bert::BertConfig = parse(value, &model_type)?;
                c.model_type = model_type;
                ModelConfig::Bert(c)
            }
            "distilbert" => ModelConfig::DistilBert(parse(value, "DistilBERT")?),
            "mpnet" => ModelConfig::MPNet(parse(value, "MPNet")?),
            "modernbert" => ModelConfig::ModernBert(parse(value, "ModernBERT")?),
            other => {
                return Err(format!(
                    "unsupported model_type `{other}` (supported families: {})",
                    SUPPORTED_MODEL_TYPES.join(", ")
                ));
            }
        };
        config.family().validate()?;
        Ok(config)
    }

    /// The family behind the config (the dispatch from config to code).
    pub fn family(&self) -> &dyn Family {
        match self {
            ModelConfig::Bert(c) => c,
            ModelConfig::DistilBert(c) => c,
            ModelConfig::MPNet(c) => c,
            ModelConfig::ModernBert(c) => c,
        }
    }

    pub fn weight_prefixes(&self) -> &'static [&'static str] {
        self.family().weight_prefixes()
    }

    pub fn table(&self) -> Vec<params::ParamSpec> {
        self.family().table()
    }
}

/// What each architecture family provides: checks on its config, the
/// prefixes its checkpoints use, its parameter table and its encoder.
pub trait Family {
    fn validate(&self) -> std::result::Result<(), String>;
    /// Prefixes checkpoints put before the encoder's weight names (a
    /// model saved with a head has them; a bare encoder has none).
    fn weight_prefixes(&self) -> &'static [&'static str];
    /// Every weight the encoder takes, under canonical names.
    fn table(&self) -> Vec<params::ParamSpec>;
    /// The encoder over the weights `vb` holds.
    fn build(&self, vb: &WeightsView) -> Result<Box<dyn Encoder>>;
}

/// Freshly initialised weights for `config` under canonical names
/// (normal(0, 0.02) matrices and embeddings, zero biases, unit norm
/// scales), for training from scratch and for tests on tiny models.
pub fn init_weights(
    config: &ModelConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Vec<(String, Tensor)>> {
    params::init_table(&config.table(), seed, dtype, device)
}

/// Loads the encoder of `files`, computing in `dtype`. A `trainable` load
/// makes every weight a variable (see [`Weights::varmap`]; with a bf16/f16
/// `dtype` they are f32 and the encoder computes with copies, see
/// [`Weights::compute_copies`]); an immutable one tracks no gradients.
pub fn load_encoder(
    files: &ModelFiles,
    dtype: DType,
    device: &Device,
    trainable: bool,
) -> Result<LoadedEncoder> {
    let config = ModelConfig::from_file(&files.config)?;
    // Training in bf16/f16 keeps f32 master weights (mixed precision);
    // otherwise the weights are converted once, on load.
    let half = matches!(dtype, DType::BF16 | DType::F16);
    let storage = if trainable && half { DType::F32 } else { dtype };
    let weights = Weights::load(&files.weights, config.weight_prefixes(), storage, device)?
        .with_compute_dtype(dtype);
    build_encoder(&config, weights, trainable)
}

/// Refuses a checkpoint with weights for more layers than the config
/// declares: they would be silently ignored. The layers' folder comes from
/// the family's table (the name segments before layer 0's index).
fn check_layer_weights(
    weights: &Weights,
    table: &[params::ParamSpec],
    layers: usize,
) -> Result<()> {
    let Some(first) = table.iter().find(|s| s.layer == Some(0)) else {
        return Ok(());
    };
    let segments: Vec<&str> = first.name.split('.').collect();
    let Some(at) = segments.iter().position(|s| *s == "0") else {
        return Ok(());
    };
    let folder = format!("{}.", segments[..at].join("."));
    let deepest = weights
        .names()
        .filter_map(|n| {
            n.strip_prefix(&folder)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max();
    match deepest {
        Some(k) if k >= layers => Err(crate::error::Error::Weight(format!(
            "the checkpoint has weights for {} layers (up to {folder}{k}) but config.json says {layers}; the rest would be ignored (fix the number of layers in config.json)",
            k + 1
        ))),
        _ => Ok(()),
    }
}

/// Builds an encoder from a config and weights already in memory.
pub fn build_encoder(
    config: &ModelConfig,
    weights: Weights,
    trainable: bool,
) -> Result<LoadedEncoder> {
    let table = config.table();
    let layers = table
        .iter()
        .filter_map(|s| s.layer)
        .max()
        .map_or(0, |l| l + 1);
    check_layer_weights(&weights, &table, layers)?;
    let weights = if trainable {
        weights.into_trainable()
    } else {
        weights
    };
    let encoder = config.family().build(&weights.view())?;
    Ok(LoadedEncoder { encoder, weights })
}
