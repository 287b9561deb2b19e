//! The sentence-transformers settings stored beside a model's weights:
//! pooling (`1_Pooling/config.json`), normalisation (`modules.json`) and the
//! maximum sequence length (`sentence_bert_config.json`), and the `Dense`
//! module listed in `modules.json`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dense::DenseFiles;
use crate::error::{Error, Result};
use crate::models::ModelFiles;
use crate::pooling::Pooling;

/// What a sentence-transformers model folder says about inference.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SbertSettings {
    pub pooling: Option<Pooling>,
    /// Why the folder's pooling cannot be used (several modes, which
    /// sentence-transformers concatenates; an unsupported or unknown one):
    /// an error unless a pooling is chosen explicitly.
    pub pooling_problem: Option<(PathBuf, String)>,
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

/// sentence-transformers' pooling modes: the `1_Pooling/config.json` key,
/// the name `pooling_mode` may give, and embedtune's pooling if it has one.
const MODES: [(&str, &str, Option<Pooling>); 6] = [
    ("pooling_mode_cls_token", "cls", Some(Pooling::Cls)),
    ("pooling_mode_mean_tokens", "mean", Some(Pooling::Mean)),
    ("pooling_mode_max_tokens", "max", Some(Pooling::Max)),
    (
        "pooling_mode_mean_sqrt_len_tokens",
        "mean_sqrt_len_tokens",
        None,
    ),
    ("pooling_mode_weightedmean_tokens", "weightedmean", None),
    ("pooling_mode_lasttoken", "lasttoken", None),
];

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::source::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The pooling a `1_Pooling/config.json` asks for, as sentence-transformers
/// reads it; `Err` says why embedtune cannot do it.
fn pooling_mode(
    config: &serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<Pooling, String> {
    let mut set: Vec<&str> = Vec::new();
    for (key, value) in config {
        if key == "pooling_mode" {
            let name = value.as_str().unwrap_or_default();
            let known = MODES.iter().find(|(_, n, _)| *n == name);
            set.push(known.ok_or(format!("unknown pooling_mode `{value}`"))?.1);
        } else if key.starts_with("pooling_mode") {
            let mode = MODES.iter().find(|(k, _, _)| k == key);
            let (_, name, _) = mode.ok_or(format!("unknown pooling mode `{key}`"))?;
            if value.as_bool() == Some(true) {
                set.push(name);
            }
        }
    }
    set.sort();
    set.dedup();
    match set[..] {
        [] => Err("sets no pooling mode".into()),
        [name] => MODES
            .iter()
            .find(|(_, n, _)| *n == name)
            .and_then(|(_, _, p)| *p)
            .ok_or(format!(
                "pooling mode `{name}` is not supported (supported: cls, mean, max)"
            )),
        _ => Err(format!(
            "sets several pooling modes ({}), which sentence-transformers concatenates; embedtune pools one way",
            set.join(", ")
        )),
    }
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
            match pooling_mode(&read_json(path)?) {
                Ok(p) => settings.pooling = Some(p),
                Err(problem) => settings.pooling_problem = Some((path.clone(), problem)),
            }
        }
        Ok(settings)
    }

    /// The pooling to use: `chosen` if given, else the folder's, else `cls`.
    pub fn pooling(&self, chosen: Option<Pooling>) -> Result<Pooling> {
        if let Some(p) = chosen {
            return Ok(p);
        }
        match &self.pooling_problem {
            Some((path, problem)) => Err(Error::Config {
                path: path.clone(),
                message: format!("{problem} (choose one with --pooling)"),
            }),
            None => Ok(self.pooling.unwrap_or(Pooling::Cls)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(json: serde_json::Value) -> std::result::Result<Pooling, String> {
        pooling_mode(json.as_object().unwrap())
    }

    #[test]
    fn pooling_modes_as_sentence_transformers_reads_them() {
        use serde_json::json;
        assert_eq!(
            mode(json!({"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false})),
            Ok(Pooling::Mean)
        );
        assert_eq!(mode(json!({"pooling_mode": "max"})), Ok(Pooling::Max));
        let several =
            mode(json!({"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}));
        assert!(
            several
                .unwrap_err()
                .contains("several pooling modes (cls, mean)")
        );
        let unknown = mode(json!({"pooling_mode_median_tokens": true}));
        assert!(unknown.unwrap_err().contains("pooling_mode_median_tokens"));
        assert!(
            mode(json!({"pooling_mode_lasttoken": true}))
                .unwrap_err()
                .contains("lasttoken")
        );
        assert!(
            mode(json!({"word_embedding_dimension": 8}))
                .unwrap_err()
                .contains("no pooling mode")
        );
    }
}
