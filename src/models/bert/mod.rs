//! A BERT encoder that infers like Hugging Face `transformers` and can be
//! trained: real dropout from a seeded RNG and a backward pass for every op
//! on the training path.

mod config;
mod cpu;
mod init;

use candle_core::{DType, Tensor};

pub use config::BertConfig;
pub use init::init_weights;

use crate::error::Result;
use crate::layers::{Activation, Dropout, DropoutCtx, DropoutSeed, LayerNorm, Linear, WeightsView};
use crate::models::{Encoder, EncoderOutput, TrainPass};
use crate::tokenize::Batch;

/// Dropout sites (see [`crate::layers::dropout`]): the embeddings, then
/// per layer the attention probabilities, the attention output and the
/// feed-forward output. The graph and the CPU pass use the same numbers.
mod site {
    pub const EMBEDDINGS: u32 = 0;
    pub fn probs(layer: usize) -> u32 {
        1 + 3 * layer as u32
    }
    pub fn attention_output(layer: usize) -> u32 {
        2 + 3 * layer as u32
    }
    pub fn ffn_output(layer: usize) -> u32 {
        3 + 3 * layer as u32
    }
}

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

    fn forward(&self, batch: &Batch, dropout: Option<DropoutCtx>) -> Result<Tensor> {
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
        self.dropout.forward(&x, dropout, site::EMBEDDINGS)
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

    fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        dropout: Option<DropoutCtx>,
        layer: usize,
    ) -> Result<Tensor> {
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
        let probs = self
            .probs_dropout
            .forward(&probs, dropout, site::probs(layer))?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let y = self.output.forward(&context)?;
        let y = self
            .hidden_dropout
            .forward(&y, dropout, site::attention_output(layer))?;
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

    fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        dropout: Option<DropoutCtx>,
        layer: usize,
    ) -> Result<Tensor> {
        let a = self.attention.forward(x, mask_bias, dropout, layer)?;
        let y = self
            .activation
            .forward_tensor(&self.intermediate.forward(&a)?)?;
        let y = self.output.forward(&y)?;
        let y = self.dropout.forward(&y, dropout, site::ffn_output(layer))?;
        self.layer_norm.forward(&y.add(&a)?)
    }
}

/// BERT (and RoBERTa-style) encoder without the pooler or any head.
pub struct BertModel {
    config: BertConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
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
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The candle graph ([`Encoder::forward_graph`]).
    fn graph(&self, batch: &Batch, seed: Option<DropoutSeed>) -> Result<EncoderOutput> {
        let dropout = seed.map(|seed| DropoutCtx {
            seed,
            rows: &batch.indices,
        });
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
        let mut x = self.embeddings.forward(batch, dropout)?;
        for (l, layer) in self.layers.iter().enumerate() {
            hidden.push(x.clone());
            x = layer.forward(&x, &mask_bias, dropout, l)?;
        }
        hidden.push(x);
        Ok(EncoderOutput {
            hidden_states: hidden,
        })
    }
}

impl Encoder for BertModel {
    fn forward(&self, batch: &Batch, dropout: Option<DropoutSeed>) -> Result<EncoderOutput> {
        if cpu::supported(self) {
            return cpu::forward(self, batch, dropout);
        }
        self.graph(batch, dropout)
    }

    fn forward_graph(&self, batch: &Batch, dropout: Option<DropoutSeed>) -> Result<EncoderOutput> {
        self.graph(batch, dropout)
    }

    fn forward_train(
        &self,
        batch: &Batch,
        dropout: DropoutSeed,
    ) -> Result<Option<Box<dyn TrainPass + '_>>> {
        if !cpu::supported(self) {
            return Ok(None);
        }
        Ok(Some(Box::new(cpu::forward_train(self, batch, dropout)?)))
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    fn max_input_len(&self) -> usize {
        self.config.max_input_len()
    }

    fn pad_token_id(&self) -> u32 {
        self.config.pad_token_id as u32
    }
}
