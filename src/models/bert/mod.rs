//! A BERT encoder that infers like Hugging Face `transformers` and can be
//! trained: real dropout from a seeded RNG and a backward pass for every op
//! on the training path.

mod config;
mod cpu;
mod init;

use std::sync::Mutex;

use candle_core::{DType, Tensor};

pub use config::BertConfig;
pub use init::init_weights;

use crate::error::Result;
use crate::layers::{Activation, Dropout, LayerNorm, Linear, WeightsView};
use crate::models::{Encoder, EncoderOutput, TrainPass};
use crate::rng::Rng;
use crate::tokenize::Batch;

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    layer_norm: LayerNorm,
    dropout: Dropout,
    position_offset: usize,
}

impl Embeddings {
    fn load(vb: &WeightsView, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Embeddings {
            word: vb.get("word_embeddings.weight", &[cfg.vocab_size, h])?,
            position: vb.get(
                "position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            token_type: vb.get("token_type_embeddings.weight", &[cfg.type_vocab_size, h])?,
            layer_norm: LayerNorm::load(&vb.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            position_offset: cfg.position_offset(),
        })
    }

    fn forward(&self, batch: &Batch, rng: Option<&mut Rng>) -> Result<Tensor> {
        let (b, t) = batch.input_ids.dims2()?;
        let h = self.word.dim(1)?;
        let ids = batch.input_ids.flatten_all()?;
        let words = self.word.index_select(&ids, 0)?.reshape((b, t, h))?;
        let types = self
            .token_type
            .index_select(&batch.token_type_ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        // Batches are right-padded, so positions are 0..t (shifted for
        // RoBERTa) for every real token; padded positions are masked later.
        let positions = self.position.narrow(0, self.position_offset, t)?;
        let x = words.add(&types)?.broadcast_add(&positions)?;
        let x = self.layer_norm.forward(&x)?;
        self.dropout.forward(&x, rng)
    }
}

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    layer_norm: LayerNorm,
    heads: usize,
    probs_dropout: Dropout,
    hidden_dropout: Dropout,
}

impl SelfAttention {
    fn load(vb: &WeightsView, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let sa = vb.pp("self");
        let out = vb.pp("output");
        Ok(SelfAttention {
            query: Linear::load(&sa.pp("query"), h, h)?,
            key: Linear::load(&sa.pp("key"), h, h)?,
            value: Linear::load(&sa.pp("value"), h, h)?,
            output: Linear::load(&out.pp("dense"), h, h)?,
            layer_norm: LayerNorm::load(&out.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
            probs_dropout: Dropout::new(cfg.attention_probs_dropout_prob),
            hidden_dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    fn forward(&self, x: &Tensor, mask_bias: &Tensor, mut rng: Option<&mut Rng>) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let hd = h / self.heads;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = scores.broadcast_add(mask_bias)?;
        let probs = crate::layers::fused::softmax_last_dim(&scores)?;
        let probs = self.probs_dropout.forward(&probs, rng.as_deref_mut())?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let y = self.output.forward(&context)?;
        let y = self.hidden_dropout.forward(&y, rng)?;
        self.layer_norm.forward(&y.add(x)?)
    }
}

struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    activation: Activation,
    output: Linear,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl Layer {
    fn load(vb: &WeightsView, cfg: &BertConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Layer {
            attention: SelfAttention::load(&vb.pp("attention"), cfg)?,
            intermediate: Linear::load(&vb.pp("intermediate").pp("dense"), h, i)?,
            activation: Activation::from_config(&cfg.hidden_act)?,
            output: Linear::load(&vb.pp("output").pp("dense"), i, h)?,
            layer_norm: LayerNorm::load(&vb.pp("output").pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    fn forward(&self, x: &Tensor, mask_bias: &Tensor, mut rng: Option<&mut Rng>) -> Result<Tensor> {
        let a = self.attention.forward(x, mask_bias, rng.as_deref_mut())?;
        let y = self
            .activation
            .forward_tensor(&self.intermediate.forward(&a)?)?;
        let y = self.dropout.forward(&self.output.forward(&y)?, rng)?;
        self.layer_norm.forward(&y.add(&a)?)
    }
}

/// BERT (and RoBERTa-style) encoder without the pooler or any head.
pub struct BertModel {
    config: BertConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// Dropout masks come from here; a mutex so `forward` can take `&self`.
    rng: Mutex<Rng>,
}

impl BertModel {
    /// Builds the encoder from weights under canonical names
    /// (`embeddings.*`, `encoder.layer.N.*`).
    pub fn load(vb: &WeightsView, config: &BertConfig) -> Result<Self> {
        let embeddings = Embeddings::load(&vb.pp("embeddings"), config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(&vb.pp("encoder").pp("layer").pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(BertModel {
            config: config.clone(),
            embeddings,
            layers,
            rng: Mutex::new(Rng::new(0)),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The encoder as a candle graph, differentiable through candle's
    /// autograd when the weights are variables. [`Encoder::forward`] uses
    /// it where there is no plain-CPU pass (other devices and dtypes); tests
    /// use it as the reference for that pass.
    pub fn forward_graph(&self, batch: &Batch, train: bool) -> Result<EncoderOutput> {
        let mut guard = self.rng.lock().expect("dropout rng lock");
        let mut rng = train.then_some(&mut *guard);
        let dtype = self.embeddings.word.dtype();
        // Additive mask: 0 for tokens, the dtype's most negative value for
        // padding, as transformers does.
        let mask = batch.attention_mask.to_dtype(dtype)?;
        let (b, t) = mask.dims2()?;
        let neg = match dtype {
            DType::F16 => -65504.0,
            DType::BF16 => -3.38e38,
            _ => f32::MIN as f64,
        };
        let mask_bias = ((1.0 - &mask)? * neg)?.reshape((b, 1, 1, t))?;
        let mut hidden = Vec::with_capacity(self.layers.len() + 1);
        let mut x = self.embeddings.forward(batch, rng.as_deref_mut())?;
        for layer in &self.layers {
            hidden.push(x.clone());
            x = layer.forward(&x, &mask_bias, rng.as_deref_mut())?;
        }
        hidden.push(x);
        Ok(EncoderOutput {
            hidden_states: hidden,
        })
    }
}

impl Encoder for BertModel {
    fn forward(&self, batch: &Batch, train: bool) -> Result<EncoderOutput> {
        if cpu::supported(self) {
            let mut rng = self.rng.lock().expect("dropout rng lock");
            return cpu::forward(self, batch, train.then_some(&mut *rng));
        }
        self.forward_graph(batch, train)
    }

    fn forward_train(&self, batch: &Batch) -> Result<Option<Box<dyn TrainPass + '_>>> {
        if !cpu::supported(self) {
            return Ok(None);
        }
        let mut rng = self.rng.lock().expect("dropout rng lock");
        Ok(Some(Box::new(cpu::forward_train(self, batch, &mut rng)?)))
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    fn set_seed(&self, seed: u64) {
        *self.rng.lock().expect("dropout rng lock") = Rng::new(seed);
    }

    fn rng_state(&self) -> Rng {
        self.rng.lock().expect("dropout rng lock").clone()
    }

    fn set_rng_state(&self, rng: Rng) {
        *self.rng.lock().expect("dropout rng lock") = rng;
    }
}
