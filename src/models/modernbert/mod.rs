//! ModernBERT (`answerdotai/ModernBERT-base`, `gte-modernbert-base`,
//! `modernbert-embed-base`): pre-LayerNorm layers without biases, rotary
//! position embeddings, a GeGLU feed-forward, and global attention every
//! `global_attn_every_n_layers` layers with sliding-window attention
//! between them.
//!
//! It runs as a candle graph on every device and trains through candle's
//! autograd: the CPU pass of [`crate::models::bert`] is written for the
//! post-LayerNorm layer with learned positions, and ModernBERT's layer
//! (pre-norm, rotary, GeGLU, windowed attention) would need a second one.
//! Padding is masked as `transformers` masks it (its eager and SDPA paths):
//! padded keys get the dtype's most negative score, so every real token's
//! output is what an unpadded run gives.

use candle_core::Tensor;
use serde::Deserialize;

use crate::error::Result;
use crate::layers::rotary::Rotary;
use crate::layers::{Activation, Dropout, DropoutCtx, DropoutSeed, LayerNorm, Linear, WeightsView};
use crate::models::bert::{check_heads, check_nonzero, padding_bias, site};
use crate::models::params::{ParamSpec, Params, Part, Role, TableBuilder};
use crate::models::{Encoder, EncoderOutput, Family};
use crate::tokenize::Batch;

/// The fields of a ModernBERT `config.json` the encoder uses.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ModernBertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_act")]
    pub hidden_activation: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub embedding_dropout: f64,
    #[serde(default)]
    pub mlp_dropout: f64,
    #[serde(default = "default_every")]
    pub global_attn_every_n_layers: usize,
    #[serde(default = "default_window")]
    pub local_attention: usize,
    #[serde(default = "default_global_theta")]
    pub global_rope_theta: f64,
    #[serde(default = "default_local_theta")]
    pub local_rope_theta: f64,
    /// transformers ≥ 5 states each layer's kind and the rotary bases
    /// per kind; older configs derive them from the fields above.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: usize,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_every() -> usize {
    3
}
fn default_window() -> usize {
    128
}
fn default_global_theta() -> f64 {
    160_000.0
}
fn default_local_theta() -> f64 {
    10_000.0
}

const FULL: &str = "full_attention";
const SLIDING: &str = "sliding_attention";

impl ModernBertConfig {
    /// Whether layer `l` attends within the sliding window only.
    pub fn is_local(&self, l: usize) -> bool {
        match &self.layer_types {
            Some(types) => types.get(l).is_some_and(|t| t == SLIDING),
            None => !l.is_multiple_of(self.global_attn_every_n_layers.max(1)),
        }
    }

    /// The rotary base of layer `l`.
    pub fn rope_theta(&self, l: usize) -> f64 {
        let (kind, fallback) = if self.is_local(l) {
            (SLIDING, self.local_rope_theta)
        } else {
            (FULL, self.global_rope_theta)
        };
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get(kind)?.get("rope_theta")?.as_f64())
            .unwrap_or(fallback)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }
}

impl Family for ModernBertConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        Activation::from_config(&self.hidden_activation).map_err(|e| e.to_string())?;
        check_nonzero(&[
            ("num_hidden_layers", self.num_hidden_layers),
            ("hidden_size", self.hidden_size),
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
        ])?;
        check_heads(self.hidden_size, self.num_attention_heads)?;
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "rotary embeddings need an even head size, got {}",
                self.head_dim()
            ));
        }
        if let Some(types) = &self.layer_types
            && (types.len() != self.num_hidden_layers
                || types.iter().any(|t| t != FULL && t != SLIDING))
        {
            return Err(format!(
                "layer_types must list {} layers, each `{FULL}` or `{SLIDING}`",
                self.num_hidden_layers
            ));
        }
        Ok(())
    }

    fn weight_prefixes(&self) -> &'static [&'static str] {
        &["model."]
    }

    /// The parameter table, under `transformers`' `ModernBertModel` names
    /// (layer 0 has no attention norm: it follows the embeddings' norm).
    fn table(&self) -> Vec<ParamSpec> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let mut t = TableBuilder::default();
        t.tensor(
            "embeddings.tok_embeddings.weight",
            &[self.vocab_size, h],
            Role::WordEmbeddings,
        )
        .norm("embeddings.norm", h, Role::EmbeddingNorm, self.norm_bias);
        for l in 0..self.num_hidden_layers {
            let p = format!("layers.{l}");
            t.layer(Some(l));
            if l > 0 {
                t.norm(
                    &format!("{p}.attn_norm"),
                    h,
                    Role::AttentionNorm,
                    self.norm_bias,
                );
            }
            t.linear(
                &format!("{p}.attn.Wqkv"),
                (h, 3 * h),
                Role::Qkv,
                self.attention_bias,
            )
            .linear(
                &format!("{p}.attn.Wo"),
                (h, h),
                Role::AttentionOutput,
                self.attention_bias,
            )
            .norm(&format!("{p}.mlp_norm"), h, Role::FfnNorm, self.norm_bias)
            .linear(
                &format!("{p}.mlp.Wi"),
                (h, 2 * i),
                Role::FfnIn,
                self.mlp_bias,
            )
            .linear(&format!("{p}.mlp.Wo"), (i, h), Role::FfnOut, self.mlp_bias);
        }
        t.layer(None)
            .norm("final_norm", h, Role::FinalNorm, self.norm_bias);
        t.build()
    }

    fn build(&self, vb: &WeightsView) -> Result<Box<dyn Encoder>> {
        Ok(Box::new(ModernBertModel::load(vb, self)?))
    }
}

/// A LayerNorm whose bias may be absent (then zero, and not a parameter).
fn norm(p: &Params, role: fn(Part) -> Role, layer: Option<usize>, eps: f64) -> Result<LayerNorm> {
    let weight = p.get(role(Part::Weight), layer).clone();
    let bias = match p.find(role(Part::Bias), layer) {
        Some(b) => b.clone(),
        None => weight.zeros_like()?,
    };
    Ok(LayerNorm::new(weight, bias, eps))
}

struct Layer {
    /// `None` in layer 0.
    attn_norm: Option<LayerNorm>,
    qkv: Linear,
    out: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    wo: Linear,
    local: bool,
    theta: f64,
}

/// A ModernBERT encoder without the prediction head.
pub struct ModernBertModel {
    config: ModernBertConfig,
    word: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    activation: Activation,
}

impl ModernBertModel {
    pub fn load(vb: &WeightsView, config: &ModernBertConfig) -> Result<Self> {
        let p = Params::load(config.table(), vb)?;
        let eps = config.norm_eps;
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let at = Some(l);
                Ok(Layer {
                    attn_norm: (l > 0)
                        .then(|| norm(&p, Role::AttentionNorm, at, eps))
                        .transpose()?,
                    qkv: p.linear(Role::Qkv, at),
                    out: p.linear(Role::AttentionOutput, at),
                    mlp_norm: norm(&p, Role::FfnNorm, at, eps)?,
                    wi: p.linear(Role::FfnIn, at),
                    wo: p.linear(Role::FfnOut, at),
                    local: config.is_local(l),
                    theta: config.rope_theta(l),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModernBertModel {
            word: p.get(Role::WordEmbeddings, None).clone(),
            emb_norm: norm(&p, Role::EmbeddingNorm, None, eps)?,
            final_norm: norm(&p, Role::FinalNorm, None, eps)?,
            activation: Activation::from_config(&config.hidden_activation)?,
            config: config.clone(),
            layers,
        })
    }

    /// The attention masks `(b, 1, 1, t)` (padding) and `(b, 1, t, t)`
    /// (padding and the sliding window), as transformers builds them.
    fn masks(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let global = padding_bias(&batch.attention_mask, self.word.dtype())?;
        let t = batch.input_ids.dim(1)?;
        let half = (self.config.local_attention / 2) as i64;
        let outside: Vec<f32> = (0..t as i64)
            .flat_map(|i| (0..t as i64).map(move |j| (i, j)))
            .map(|(i, j)| if (i - j).abs() <= half { 0.0 } else { f32::MIN })
            .collect();
        let window = Tensor::from_vec(outside, (1, 1, t, t), batch.input_ids.device())?
            .to_dtype(self.word.dtype())?;
        let local = global.broadcast_minimum(&window)?;
        Ok((global, local))
    }

    fn graph(&self, batch: &Batch, seed: Option<DropoutSeed>) -> Result<EncoderOutput> {
        let dropout = seed.map(|seed| DropoutCtx {
            seed,
            rows: &batch.indices,
        });
        let c = &self.config;
        let (b, t) = batch.input_ids.dims2()?;
        let (h, heads) = (c.hidden_size, c.num_attention_heads);
        let x = self
            .word
            .index_select(&batch.input_ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let x = self.emb_norm.forward(&x)?;
        let mut x = Dropout::new(c.embedding_dropout).forward(&x, dropout, site::EMBEDDINGS)?;
        let (global, local) = self.masks(batch)?;
        let mut hidden = Vec::with_capacity(self.layers.len() + 1);
        for (l, layer) in self.layers.iter().enumerate() {
            hidden.push(x.clone());
            let normed = match &layer.attn_norm {
                Some(n) => n.forward(&x)?,
                None => x.clone(),
            };
            let mask = if layer.local { &local } else { &global };
            let rotary = Rotary::new(layer.theta, h / heads, t, x.dtype(), x.device())?;
            let a = self.attention(layer, &normed, mask, &rotary, dropout, l)?;
            x = x.add(&a)?;
            let m = self.mlp(layer, &layer.mlp_norm.forward(&x)?, dropout, l)?;
            x = x.add(&m)?;
        }
        hidden.push(self.final_norm.forward(&x)?);
        Ok(EncoderOutput {
            hidden_states: hidden,
        })
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        mask: &Tensor,
        rotary: &Rotary,
        dropout: Option<DropoutCtx>,
        l: usize,
    ) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let hd = h / heads;
        // (b, t, 3, heads, hd) → three (b, heads, t, hd)
        let qkv = layer.qkv.forward(x)?.reshape((b, t, 3, heads, hd))?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = rotary.apply(&part(0)?)?;
        let k = rotary.apply(&part(1)?)?;
        let v = part(2)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = scores.broadcast_add(mask)?;
        let probs = crate::layers::fused::softmax_last_dim(&scores)?;
        let p = self.config.attention_dropout;
        let probs = Dropout::new(p).forward(&probs, dropout, site::probs(l))?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let y = layer.out.forward(&context)?;
        Dropout::new(p).forward(&y, dropout, site::attention_output(l))
    }

    /// GeGLU: `Wo(act(input) · gate)` with `input, gate = Wi(x)` split in
    /// halves.
    fn mlp(
        &self,
        layer: &Layer,
        x: &Tensor,
        dropout: Option<DropoutCtx>,
        l: usize,
    ) -> Result<Tensor> {
        let y = layer.wi.forward(x)?;
        let i = self.config.intermediate_size;
        let (input, gate) = (y.narrow(2, 0, i)?, y.narrow(2, i, i)?);
        let y = self.activation.forward_tensor(&input)?.mul(&gate)?;
        let y = Dropout::new(self.config.mlp_dropout).forward(&y, dropout, site::ffn_output(l))?;
        layer.wo.forward(&y)
    }
}

impl Encoder for ModernBertModel {
    fn forward(&self, batch: &Batch, dropout: Option<DropoutSeed>) -> Result<EncoderOutput> {
        self.graph(batch, dropout)
    }

    fn forward_graph(&self, batch: &Batch, dropout: Option<DropoutSeed>) -> Result<EncoderOutput> {
        self.graph(batch, dropout)
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    fn max_input_len(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn pad_token_id(&self) -> u32 {
        self.config.pad_token_id as u32
    }
}
