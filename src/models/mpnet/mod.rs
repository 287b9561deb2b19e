//! MPNet (`all-mpnet-base-v2`): BERT's post-LayerNorm encoder with
//! RoBERTa-style positions (from `pad + 1`), no token types, and a
//! bucketed relative position bias shared by every layer, added to the
//! attention scores before the padding mask. It runs on
//! [`crate::models::bert::BertModel`] (graph and CPU pass) from this table.

use serde::Deserialize;

use crate::error::Result as LoadResult;
use crate::layers::{Activation, RelativeBuckets, WeightsView};
use crate::models::bert::config::{default_act, default_dropout, default_eps};
use crate::models::bert::{Arch, BertModel, PostLnNames, PostLnSizes, check_heads, check_nonzero};
use crate::models::params::{ParamSpec, Role};
use crate::models::{Encoder, Family};

/// The fields of an MPNet `config.json` the encoder uses.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct MPNetConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_pad")]
    pub pad_token_id: usize,
}

fn default_buckets() -> usize {
    32
}
fn default_pad() -> usize {
    1
}

/// `transformers`' MPNet buckets relative positions with these, whatever
/// `relative_attention_num_buckets` says (that only sizes the table).
const BUCKETS: RelativeBuckets = RelativeBuckets {
    num_buckets: 32,
    max_distance: 128,
};

/// MPNet's embeddings fix the padding index at 1, so positions count from 2.
const PADDING_IDX: usize = 1;

impl MPNetConfig {
    pub fn arch(&self) -> Arch {
        Arch {
            hidden_size: self.hidden_size,
            num_heads: self.num_attention_heads,
            num_layers: self.num_hidden_layers,
            max_positions: self.max_position_embeddings,
            position_offset: PADDING_IDX + 1,
            layer_norm_eps: self.layer_norm_eps,
            activation: Activation::from_config(&self.hidden_act).unwrap_or(Activation::Gelu),
            hidden_dropout: self.hidden_dropout_prob,
            probs_dropout: self.attention_probs_dropout_prob,
            attention_output_dropout: true,
            relative_attention: Some(BUCKETS),
            pad_token_id: self.pad_token_id as u32,
        }
    }
}

impl Family for MPNetConfig {
    fn validate(&self) -> Result<(), String> {
        Activation::from_config(&self.hidden_act).map_err(|e| e.to_string())?;
        check_nonzero(&[
            ("num_hidden_layers", self.num_hidden_layers),
            ("hidden_size", self.hidden_size),
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
        ])?;
        if self.relative_attention_num_buckets < BUCKETS.num_buckets {
            return Err(format!(
                "relative_attention_num_buckets must be at least {}",
                BUCKETS.num_buckets
            ));
        }
        check_heads(self.hidden_size, self.num_attention_heads)
    }

    fn weight_prefixes(&self) -> &'static [&'static str] {
        &["mpnet."]
    }

    /// The parameter table, under `transformers`' `MPNetModel` names.
    fn table(&self) -> Vec<ParamSpec> {
        let names = PostLnNames {
            layer: "encoder.layer",
            parts: [
                "attention.attn.q",
                "attention.attn.k",
                "attention.attn.v",
                "attention.attn.o",
                "attention.LayerNorm",
                "intermediate.dense",
                "output.dense",
                "output.LayerNorm",
            ],
        };
        let sizes = PostLnSizes {
            vocab: self.vocab_size,
            intermediate: self.intermediate_size,
            type_vocab: 0,
        };
        names
            .table(&self.arch(), &sizes)
            .tensor(
                "encoder.relative_attention_bias.weight",
                &[
                    self.relative_attention_num_buckets,
                    self.num_attention_heads,
                ],
                Role::RelativeAttentionBias,
            )
            .build()
    }

    fn build(&self, vb: &WeightsView) -> LoadResult<Box<dyn Encoder>> {
        Ok(Box::new(BertModel::load(vb, self.arch(), self.table())?))
    }
}
