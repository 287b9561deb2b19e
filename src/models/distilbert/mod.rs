//! DistilBERT: BERT's post-LayerNorm encoder under its own names
//! (`transformer.layer.N.attention.q_lin`, `sa_layer_norm`, `ffn.lin1`…),
//! without token types, pooler or dropout on the attention output. It runs
//! on [`crate::models::bert::BertModel`] (graph and CPU pass) from this
//! table.

use serde::Deserialize;

use crate::error::Result as LoadResult;
use crate::layers::{Activation, WeightsView};
use crate::models::bert::config::{default_act, default_dropout};
use crate::models::bert::{Arch, BertModel, PostLnNames, PostLnSizes, check_heads, check_nonzero};
use crate::models::params::ParamSpec;
use crate::models::{Encoder, Family};

/// The fields of a DistilBERT `config.json` the encoder uses.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    #[serde(alias = "hidden_size")]
    pub dim: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layers: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_heads: usize,
    #[serde(alias = "intermediate_size")]
    pub hidden_dim: usize,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default = "default_dropout")]
    pub attention_dropout: f64,
    #[serde(default = "default_act")]
    pub activation: String,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    #[serde(default)]
    pub pad_token_id: usize,
}

impl DistilBertConfig {
    pub fn arch(&self) -> Arch {
        Arch {
            hidden_size: self.dim,
            num_heads: self.n_heads,
            num_layers: self.n_layers,
            max_positions: self.max_position_embeddings,
            position_offset: 0,
            // transformers hard-codes it.
            layer_norm_eps: 1e-12,
            activation: Activation::from_config(&self.activation).unwrap_or(Activation::Gelu),
            hidden_dropout: self.dropout,
            probs_dropout: self.attention_dropout,
            attention_output_dropout: false,
            relative_attention: None,
            pad_token_id: self.pad_token_id as u32,
        }
    }
}

impl Family for DistilBertConfig {
    fn validate(&self) -> Result<(), String> {
        Activation::from_config(&self.activation).map_err(|e| e.to_string())?;
        check_nonzero(&[
            ("n_layers", self.n_layers),
            ("dim", self.dim),
            ("vocab_size", self.vocab_size),
            ("hidden_dim", self.hidden_dim),
        ])?;
        check_heads(self.dim, self.n_heads)
    }

    fn weight_prefixes(&self) -> &'static [&'static str] {
        &["distilbert."]
    }

    /// The parameter table, under `transformers`' `DistilBertModel` names.
    fn table(&self) -> Vec<ParamSpec> {
        let names = PostLnNames {
            layer: "transformer.layer",
            parts: [
                "attention.q_lin",
                "attention.k_lin",
                "attention.v_lin",
                "attention.out_lin",
                "sa_layer_norm",
                "ffn.lin1",
                "ffn.lin2",
                "output_layer_norm",
            ],
        };
        let sizes = PostLnSizes {
            vocab: self.vocab_size,
            intermediate: self.hidden_dim,
            type_vocab: 0,
        };
        names.table(&self.arch(), &sizes).build()
    }

    fn build(&self, vb: &WeightsView) -> LoadResult<Box<dyn Encoder>> {
        Ok(Box::new(BertModel::load(vb, self.arch(), self.table())?))
    }
}
