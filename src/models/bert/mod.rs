//! The post-LayerNorm encoder of BERT and its relatives (RoBERTa, XLM-R,
//! CamemBERT, DistilBERT, MPNet), inferring like Hugging Face
//! `transformers` and trainable: real dropout and a backward pass for every
//! op on the training path.
//!
//! Each family says what differs through an [`Arch`] (position offset,
//! dropout sites, relative position bias) and a parameter table
//! ([`crate::models::params`]) naming its weights; the candle graph here
//! and the CPU pass in `cpu` both take their weights from that table.

pub(crate) mod config;
mod cpu;

use candle_core::{DType, Tensor};

pub use config::{BertConfig, check_heads, check_nonzero};

use crate::error::Result;
use crate::layers::{
    Activation, Dropout, DropoutCtx, DropoutSeed, LayerNorm, Linear, RelativeBuckets, WeightsView,
};
use crate::models::params::{ParamSpec, Params, Part, Role, TableBuilder};
use crate::models::{Encoder, EncoderOutput, TrainPass};
use crate::tokenize::Batch;

/// What a family of the post-LayerNorm encoder needs beyond its parameter
/// table.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    /// Rows of the position table.
    pub max_positions: usize,
    /// First position id (RoBERTa-style models count from `pad + 1`).
    pub position_offset: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    /// Dropout of the embeddings and of each block's output.
    pub hidden_dropout: f64,
    /// Dropout of the attention probabilities.
    pub probs_dropout: f64,
    /// Whether the attention block's output has dropout (DistilBERT: no).
    pub attention_output_dropout: bool,
    /// MPNet's relative position bias.
    pub relative_attention: Option<RelativeBuckets>,
    pub pad_token_id: u32,
}

impl Arch {
    /// The longest input the position table allows.
    pub fn max_input_len(&self) -> usize {
        self.max_positions.saturating_sub(self.position_offset)
    }
}

/// Where a post-LayerNorm family stores its weights: the embeddings under
/// `embeddings.{word,position,token_type}_embeddings` and
/// `embeddings.LayerNorm`, layer `N` under `{layer}.N.{part}` for each of
/// [`LAYER_ROLES`].
pub struct PostLnNames {
    pub layer: &'static str,
    pub parts: [&'static str; 8],
}

/// Sizes the post-LayerNorm table needs beyond [`Arch`].
pub struct PostLnSizes {
    pub vocab: usize,
    pub intermediate: usize,
    /// 0: no token-type embeddings.
    pub type_vocab: usize,
}

impl PostLnNames {
    /// The parameter table of `arch` under these names (a family may add
    /// more entries to the builder).
    pub fn table(&self, arch: &Arch, sizes: &PostLnSizes) -> TableBuilder {
        let (h, i) = (arch.hidden_size, sizes.intermediate);
        let mut t = TableBuilder::default();
        t.tensor(
            "embeddings.word_embeddings.weight",
            &[sizes.vocab, h],
            Role::WordEmbeddings,
        )
        .tensor(
            "embeddings.position_embeddings.weight",
            &[arch.max_positions, h],
            Role::PositionEmbeddings,
        );
        if sizes.type_vocab > 0 {
            t.tensor(
                "embeddings.token_type_embeddings.weight",
                &[sizes.type_vocab, h],
                Role::TokenTypeEmbeddings,
            )
            // Some RoBERTa-style checkpoints have none.
            .optional();
        }
        t.norm("embeddings.LayerNorm", h, Role::EmbeddingNorm, true);
        // (in, out) of each linear layer; `None`: a norm.
        let sq = Some((h, h));
        let dims = [sq, sq, sq, sq, None, Some((h, i)), Some((i, h)), None];
        for l in 0..arch.num_layers {
            t.layer(Some(l));
            for ((part, role), dims) in self.parts.iter().zip(LAYER_ROLES).zip(dims) {
                let name = format!("{}.{l}.{part}", self.layer);
                match dims {
                    Some(dims) => t.linear(&name, dims, role, true),
                    None => t.norm(&name, h, role, true),
                };
            }
        }
        t.layer(None);
        t
    }
}

/// Dropout sites (see [`crate::layers::dropout`]): the embeddings, then
/// per layer the attention probabilities, the attention output and the
/// feed-forward output. The graph and the CPU pass use the same numbers
/// (and ModernBERT's graph: its GeGLU product is its feed-forward site).
pub(crate) mod site {
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

/// The per-layer linear layers and norms, in the order the CPU pass holds
/// their slices and gradients.
const LAYER_ROLES: [fn(Part) -> Role; 8] = [
    Role::Query,
    Role::Key,
    Role::Value,
    Role::AttentionOutput,
    Role::AttentionNorm,
    Role::FfnIn,
    Role::FfnOut,
    Role::FfnNorm,
];

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Option<Tensor>,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl Embeddings {
    fn new(p: &Params, arch: &Arch) -> Self {
        Embeddings {
            word: p.get(Role::WordEmbeddings, None).clone(),
            position: p.get(Role::PositionEmbeddings, None).clone(),
            token_type: p.find(Role::TokenTypeEmbeddings, None).cloned(),
            layer_norm: norm(p, Role::EmbeddingNorm, None, arch),
            dropout: Dropout::new(arch.hidden_dropout),
        }
    }

    fn forward(&self, batch: &Batch, arch: &Arch, dropout: Option<DropoutCtx>) -> Result<Tensor> {
        let (b, t) = batch.input_ids.dims2()?;
        let h = self.word.dim(1)?;
        let lookup = |table: &Tensor, ids: &Tensor| -> Result<Tensor> {
            Ok(table
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, t, h))?)
        };
        let mut x = lookup(&self.word, &batch.input_ids)?;
        if let Some(types) = &self.token_type {
            x = x.add(&lookup(types, &batch.token_type_ids)?)?;
        }
        // Batches are right-padded, so positions are 0..t (shifted for
        // RoBERTa) for every real token; padded positions are masked later.
        let positions = self.position.narrow(0, arch.position_offset, t)?;
        let x = x.broadcast_add(&positions)?;
        let x = self.layer_norm.forward(&x)?;
        self.dropout.forward(&x, dropout, site::EMBEDDINGS)
    }
}

fn norm(p: &Params, role: fn(Part) -> Role, layer: Option<usize>, arch: &Arch) -> LayerNorm {
    LayerNorm::new(
        p.get(role(Part::Weight), layer).clone(),
        p.get(role(Part::Bias), layer).clone(),
        arch.layer_norm_eps,
    )
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    ffn_output: Linear,
    ffn_norm: LayerNorm,
    probs_dropout: Dropout,
    /// Zero probability where the family has no such dropout.
    attention_dropout: Dropout,
    ffn_dropout: Dropout,
}

impl Layer {
    fn new(p: &Params, arch: &Arch, l: usize) -> Self {
        let at = Some(l);
        let attention_p = if arch.attention_output_dropout {
            arch.hidden_dropout
        } else {
            0.0
        };
        Layer {
            query: p.linear(Role::Query, at),
            key: p.linear(Role::Key, at),
            value: p.linear(Role::Value, at),
            output: p.linear(Role::AttentionOutput, at),
            attention_norm: norm(p, Role::AttentionNorm, at, arch),
            intermediate: p.linear(Role::FfnIn, at),
            ffn_output: p.linear(Role::FfnOut, at),
            ffn_norm: norm(p, Role::FfnNorm, at, arch),
            probs_dropout: Dropout::new(arch.probs_dropout),
            attention_dropout: Dropout::new(attention_p),
            ffn_dropout: Dropout::new(arch.hidden_dropout),
        }
    }

    /// `bias`: what is added to the scores, in order: the relative position
    /// bias `(1, heads, t, t)` where the family has one, then the padding
    /// mask `(b, 1, 1, t)` (transformers' order).
    fn attention(
        &self,
        x: &Tensor,
        bias: &[Tensor],
        heads: usize,
        dropout: Option<DropoutCtx>,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let hd = h / heads;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let mut scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        for add in bias {
            scores = scores.broadcast_add(add)?;
        }
        let probs = crate::layers::fused::softmax_last_dim(&scores)?;
        let probs = self
            .probs_dropout
            .forward(&probs, dropout, site::probs(layer))?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let y = self.output.forward(&context)?;
        let y = self
            .attention_dropout
            .forward(&y, dropout, site::attention_output(layer))?;
        self.attention_norm.forward(&y.add(x)?)
    }

    fn forward(
        &self,
        x: &Tensor,
        bias: &[Tensor],
        arch: &Arch,
        dropout: Option<DropoutCtx>,
        layer: usize,
    ) -> Result<Tensor> {
        let a = self.attention(x, bias, arch.num_heads, dropout, layer)?;
        let y = arch
            .activation
            .forward_tensor(&self.intermediate.forward(&a)?)?;
        let y = self.ffn_output.forward(&y)?;
        let y = self
            .ffn_dropout
            .forward(&y, dropout, site::ffn_output(layer))?;
        self.ffn_norm.forward(&y.add(&a)?)
    }
}

/// The additive padding mask `(b, 1, 1, t)`: 0 for tokens, the dtype's most
/// negative value for padding, as transformers does.
pub(crate) fn padding_bias(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let mask = attention_mask.to_dtype(dtype)?;
    let (b, t) = mask.dims2()?;
    let neg = match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.38e38,
        _ => f32::MIN as f64,
    };
    Ok(((1.0 - &mask)? * neg)?.reshape((b, 1, 1, t))?)
}

/// A post-LayerNorm encoder without the pooler or any head.
pub struct BertModel {
    arch: Arch,
    params: Params,
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl BertModel {
    /// Builds the encoder from the weights `table` names (canonical names,
    /// family prefix stripped).
    pub fn load(vb: &WeightsView, arch: Arch, table: Vec<ParamSpec>) -> Result<Self> {
        let params = Params::load(table, vb)?;
        let embeddings = Embeddings::new(&params, &arch);
        let layers = (0..arch.num_layers)
            .map(|l| Layer::new(&params, &arch, l))
            .collect();
        Ok(BertModel {
            arch,
            params,
            embeddings,
            layers,
        })
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// The candle graph ([`Encoder::forward_graph`]).
    fn graph(&self, batch: &Batch, seed: Option<DropoutSeed>) -> Result<EncoderOutput> {
        let dropout = seed.map(|seed| DropoutCtx {
            seed,
            rows: &batch.indices,
        });
        let dtype = self.embeddings.word.dtype();
        let mut bias = Vec::with_capacity(2);
        if let Some(buckets) = &self.arch.relative_attention {
            let table = self.params.get(Role::RelativeAttentionBias, None);
            bias.push(buckets.bias(table, batch.input_ids.dim(1)?)?);
        }
        bias.push(padding_bias(&batch.attention_mask, dtype)?);
        let mut hidden = Vec::with_capacity(self.layers.len() + 1);
        let mut x = self.embeddings.forward(batch, &self.arch, dropout)?;
        for (l, layer) in self.layers.iter().enumerate() {
            hidden.push(x.clone());
            x = layer.forward(&x, &bias, &self.arch, dropout, l)?;
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
        self.arch.hidden_size
    }

    fn num_layers(&self) -> usize {
        self.arch.num_layers
    }

    fn max_input_len(&self) -> usize {
        self.arch.max_input_len()
    }

    fn pad_token_id(&self) -> u32 {
        self.arch.pad_token_id
    }
}
