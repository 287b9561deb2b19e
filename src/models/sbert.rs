//! The sentence-transformers settings stored beside a model's weights:
//! pooling (`1_Pooling/config.json`), normalisation (`modules.json`) and the
//! maximum sequence length (`sentence_bert_config.json`), and the `Dense`
//! module listed in `modules.json`.

use std::path::Path;

use serde::Deserialize;

use crate::dense::DenseFiles;
use crate::error::{Error, Result};
use crate::models::ModelFiles;
use crate::pooling::Pooling;

/// What a sentence-transformers model folder says about inference.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SbertSettings {
    pub pooling: Option<Pooling>,
    pub normalize: bool,
    pub max_seq_length: Option<usize>,
    /// A linear map applied after pooling, before normalising.
    pub dense: Option<DenseFiles>,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

impl Module {
    /// Whether the module is of class `class`, under its old name
    /// (`sentence_transformers.models.Dense`) or its module path
    /// (`sentence_transformers.base.modules.dense.Dense`).
    fn is(&self, class: &str) -> bool {
        self.kind.rsplit('.').next() == Some(class)
    }
}

/// The folder (relative to the model root) of the `Dense` module listed in
/// `modules.json`, if any. More than one, or one after `Normalize`, is an
/// error: embedtune applies exactly one, between pooling and normalising.
pub fn dense_folder(modules_json: &Path) -> Result<Option<String>> {
    let modules: Vec<Module> = read_json(modules_json)?;
    let bad = |message: &str| Error::Config {
        path: modules_json.to_path_buf(),
        message: message.into(),
    };
    let dense: Vec<usize> = (0..modules.len())
        .filter(|&i| modules[i].is("Dense"))
        .collect();
    match dense[..] {
        [] => Ok(None),
        [i] if modules[..i].iter().any(|m| m.is("Normalize")) => Err(bad(
            "a Dense module after Normalize is not supported (embedtune applies Dense before normalising)",
        )),
        [i] if modules[i].path.is_empty() => Err(bad("the Dense module has no `path`")),
        [i] => Ok(Some(modules[i].path.trim_end_matches('/').to_string())),
        _ => Err(bad("more than one Dense module is not supported")),
    }
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
        let mut settings = SbertSettings {
            dense: files.dense.clone(),
            ..SbertSettings::default()
        };
        if let Some(path) = &files.modules {
            let modules: Vec<Module> = read_json(path)?;
            settings.normalize = modules.iter().any(|m| m.is("Normalize"));
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
