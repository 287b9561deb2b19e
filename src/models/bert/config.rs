use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::layers::Activation;

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
fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

/// Model types with the BERT architecture and its weight names.
const BERT_TYPES: &[&str] = &["bert", "roberta", "xlm-roberta", "camembert"];

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::source::read_to_string(path)?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: format!("not a BERT-style config: {e}"),
        })?;
        config.validate().map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !BERT_TYPES.contains(&self.model_type.as_str()) {
            return Err(format!(
                "unsupported model_type `{}` (supported: {})",
                self.model_type,
                BERT_TYPES.join(", ")
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "unsupported position_embedding_type `{}` (only `absolute`)",
                self.position_embedding_type
            ));
        }
        Activation::from_config(&self.hidden_act).map_err(|e| e.to_string())?;
        for (name, v) in [
            ("num_hidden_layers", self.num_hidden_layers),
            ("hidden_size", self.hidden_size),
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
        ] {
            if v == 0 {
                return Err(format!(
                    "{name} is 0: the encoder would have nothing to run"
                ));
            }
        }
        if self.max_position_embeddings <= self.position_offset() + 1 {
            return Err(format!(
                "max_position_embeddings {} leaves no positions for tokens",
                self.max_position_embeddings
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }

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
        self.max_position_embeddings - self.position_offset()
    }

    /// Prefixes checkpoints put before the encoder's weight names.
    pub fn weight_prefixes(&self) -> Vec<&'static str> {
        match self.model_type.as_str() {
            "bert" => vec!["bert."],
            _ => vec!["roberta.", "bert."],
        }
    }
}
