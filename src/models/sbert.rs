//! The sentence-transformers settings stored beside a model's weights:
//! pooling (`1_Pooling/config.json`), normalisation (`modules.json`) and the
//! maximum sequence length (`sentence_bert_config.json`).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::ModelFiles;
use crate::pooling::Pooling;

/// What a sentence-transformers model folder says about inference.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SbertSettings {
    pub pooling: Option<Pooling>,
    pub normalize: bool,
    pub max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct SbertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PoolingConfig {
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl SbertSettings {
    pub fn read(files: &ModelFiles) -> Result<Self> {
        let mut settings = SbertSettings::default();
        if let Some(path) = &files.modules {
            let modules: Vec<Module> = read_json(path)?;
            settings.normalize = modules.iter().any(|m| m.kind.ends_with("models.Normalize"));
        }
        if let Some(path) = &files.sentence_bert_config {
            settings.max_seq_length = read_json::<SbertConfig>(path)?.max_seq_length;
        }
        if let Some(path) = &files.pooling_config {
            let p: PoolingConfig = read_json(path)?;
            settings.pooling = if p.pooling_mode_mean_tokens {
                Some(Pooling::Mean)
            } else if p.pooling_mode_cls_token {
                Some(Pooling::Cls)
            } else if p.pooling_mode_max_tokens {
                Some(Pooling::Max)
            } else if p.pooling_mode_mean_sqrt_len_tokens
                || p.pooling_mode_weightedmean_tokens
                || p.pooling_mode_lasttoken
            {
                return Err(Error::Config {
                    path: path.clone(),
                    message: "this pooling mode is not supported (supported: cls, mean, max)"
                        .into(),
                });
            } else {
                None
            };
        }
        Ok(settings)
    }
}
