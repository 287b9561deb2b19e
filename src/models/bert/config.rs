use serde::Deserialize;

use super::{Arch, BertModel, PostLnNames, PostLnSizes};
use crate::error::Result;
use crate::layers::Activation;
use crate::layers::WeightsView;
use crate::models::params::ParamSpec;
use crate::models::{Encoder, Family};

/// The fields of a Hugging Face `config.json` that a BERT-style encoder uses.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
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
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_model_type() -> String {
    "bert".into()
}
pub(crate) fn default_act() -> String {
    "gelu".into()
}
pub(crate) fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
pub(crate) fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// RoBERTa-family models count positions from `pad_token_id + 1`.
    pub fn position_offset(&self) -> usize {
        if self.model_type == "bert" {
            0
        } else {
            self.pad_token_id + 1
        }
    }

    /// The longest input the position table allows.
    pub fn max_input_len(&self) -> usize {
        self.arch().max_input_len()
    }

    pub fn arch(&self) -> Arch {
        Arch {
            hidden_size: self.hidden_size,
            num_heads: self.num_attention_heads,
            num_layers: self.num_hidden_layers,
            max_positions: self.max_position_embeddings,
            position_offset: self.position_offset(),
            layer_norm_eps: self.layer_norm_eps,
            activation: Activation::from_config(&self.hidden_act).unwrap_or(Activation::Gelu),
            hidden_dropout: self.hidden_dropout_prob,
            probs_dropout: self.attention_probs_dropout_prob,
            attention_output_dropout: true,
            relative_attention: None,
            pad_token_id: self.pad_token_id as u32,
        }
    }
}

impl Family for BertConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "unsupported position_embedding_type `{}` (only `absolute`)",
                self.position_embedding_type
            ));
        }
        Activation::from_config(&self.hidden_act).map_err(|e| e.to_string())?;
        check_nonzero(&[
            ("num_hidden_layers", self.num_hidden_layers),
            ("hidden_size", self.hidden_size),
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
        ])?;
        if self.max_position_embeddings <= self.position_offset() + 1 {
            return Err(format!(
                "max_position_embeddings {} leaves no positions for tokens",
                self.max_position_embeddings
            ));
        }
        check_heads(self.hidden_size, self.num_attention_heads)
    }

    /// Prefixes checkpoints put before the encoder's weight names.
    fn weight_prefixes(&self) -> &'static [&'static str] {
        match self.model_type.as_str() {
            "bert" => &["bert."],
            _ => &["roberta.", "bert."],
        }
    }

    /// The parameter table, under `transformers`' `BertModel` names.
    fn table(&self) -> Vec<ParamSpec> {
        let names = PostLnNames {
            layer: "encoder.layer",
            parts: [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "attention.output.LayerNorm",
                "intermediate.dense",
                "output.dense",
                "output.LayerNorm",
            ],
        };
        let sizes = PostLnSizes {
            vocab: self.vocab_size,
            intermediate: self.intermediate_size,
            type_vocab: self.type_vocab_size,
        };
        names.table(&self.arch(), &sizes).build()
    }

    fn build(&self, vb: &WeightsView) -> Result<Box<dyn Encoder>> {
        Ok(Box::new(BertModel::load(vb, self.arch(), self.table())?))
    }
}

/// Attention heads must divide the hidden size.
/// Refuses a size of 0: the encoder would have nothing to run.
pub fn check_nonzero(sizes: &[(&str, usize)]) -> std::result::Result<(), String> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(format!(
            "{name} is 0: the encoder would have nothing to run"
        )),
        None => Ok(()),
    }
}

pub fn check_heads(hidden: usize, heads: usize) -> std::result::Result<(), String> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(format!(
            "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        ));
    }
    Ok(())
}
