//! DistilBERT: BERT's post-LayerNorm encoder under its own names
//! (`transformer.layer.N.attention.q_lin`, `sa_layer_norm`, `ffn.lin1`…),
//! without token types, pooler or dropout on the attention output. It runs
//! on [`crate::models::bert::BertModel`] (graph and CPU pass) from this
//! table.

use serde::Deserialize;

use crate::error::Result as LoadResult;
use crate::layers::{Activation, WeightsView};
use crate::models::bert::{Arch, BertModel, check_heads};
use crate::models::params::{ParamSpec, Role, TableBuilder};
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

fn default_dropout() -> f64 {
    0.1
}
fn default_act() -> String {
    "gelu".into()
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
        check_heads(self.dim, self.n_heads)
    }

    fn weight_prefixes(&self) -> &'static [&'static str] {
        &["distilbert."]
    }

    /// The parameter table, under `transformers`' `DistilBertModel` names.
    fn table(&self) -> Vec<ParamSpec> {
        let (h, i) = (self.dim, self.hidden_dim);
        let mut t = TableBuilder::default();
        t.tensor(
            "embeddings.word_embeddings.weight",
            &[self.vocab_size, h],
            Role::WordEmbeddings,
        )
        .tensor(
            "embeddings.position_embeddings.weight",
            &[self.max_position_embeddings, h],
            Role::PositionEmbeddings,
        )
        .norm("embeddings.LayerNorm", h, Role::EmbeddingNorm, true);
        for l in 0..self.n_layers {
            let p = format!("transformer.layer.{l}");
            t.layer(Some(l))
                .linear(&format!("{p}.attention.q_lin"), (h, h), Role::Query, true)
                .linear(&format!("{p}.attention.k_lin"), (h, h), Role::Key, true)
                .linear(&format!("{p}.attention.v_lin"), (h, h), Role::Value, true)
                .linear(
                    &format!("{p}.attention.out_lin"),
                    (h, h),
                    Role::AttentionOutput,
                    true,
                )
                .norm(&format!("{p}.sa_layer_norm"), h, Role::AttentionNorm, true)
                .linear(&format!("{p}.ffn.lin1"), (h, i), Role::FfnIn, true)
                .linear(&format!("{p}.ffn.lin2"), (i, h), Role::FfnOut, true)
                .norm(&format!("{p}.output_layer_norm"), h, Role::FfnNorm, true);
        }
        t.build()
    }

    fn build(&self, vb: &WeightsView) -> LoadResult<Box<dyn Encoder>> {
        Ok(Box::new(BertModel::load(vb, self.arch(), self.table())?))
    }
}
