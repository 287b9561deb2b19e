//! Where a model's files are: a local folder or a Hugging Face Hub repository.
//!
//! Resolution ends in a [`ModelFiles`], a list of local paths; nothing after
//! this module knows whether a model came from the Hub.

use std::path::{Path, PathBuf};

use crate::dense::{self, DenseFiles};
use crate::error::{Error, Result};
use crate::models::{hub, sbert};

/// What the user named with `--model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder on disk in Hugging Face layout.
    Local(PathBuf),
    /// A Hub repository id, e.g. `sentence-transformers/all-MiniLM-L6-v2`, and
    /// an optional revision (`@rev`).
    Hub {
        repo: String,
        revision: Option<String>,
    },
}

impl ModelSource {
    /// An existing folder wins; text that looks like a path (`./x`, `/x`,
    /// `x/`, `~/x`) is a folder that must exist; anything else is a Hub id.
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::Local(path.to_path_buf()));
        }
        let looks_like_path = spec.starts_with('.')
            || spec.starts_with('/')
            || spec.starts_with('~')
            || spec.ends_with('/')
            || spec.contains('\\')
            || spec.matches('/').count() > 1;
        if looks_like_path || path.exists() {
            let message = if path.exists() {
                "is not a folder".to_string()
            } else {
                "no such folder".to_string()
            };
            return Err(Error::Model {
                model: spec.to_string(),
                message,
            });
        }
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev.to_string())),
            None => (spec, None),
        };
        let valid = !repo.is_empty()
            && revision.as_deref() != Some("")
            && repo
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !valid {
            return Err(Error::Model {
                model: spec.to_string(),
                message:
                    "neither an existing folder nor a Hub id (`org/name` or `org/name@revision`)"
                        .into(),
            });
        }
        Ok(ModelSource::Hub {
            repo: repo.to_string(),
            revision,
        })
    }
}

/// How the weights are stored.
#[derive(Debug, Clone)]
pub enum WeightFiles {
    /// One or more safetensors files (several for a sharded checkpoint).
    SafeTensors(Vec<PathBuf>),
    /// A PyTorch pickle checkpoint.
    PytorchBin(PathBuf),
}

/// How the tokenizer is stored.
#[derive(Debug, Clone)]
pub enum TokenizerFiles {
    Json(PathBuf),
    /// WordPiece vocabulary plus the optional `tokenizer_config.json` that says
    /// whether to lower-case.
    Vocab {
        vocab: PathBuf,
        config: Option<PathBuf>,
    },
}

/// Every file of a model that embedtune reads, as local paths.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user asked for, for messages and reports.
    pub name: String,
    /// The folder the files are in (a Hub snapshot folder for Hub models).
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: WeightFiles,
    pub tokenizer: TokenizerFiles,
    /// sentence-transformers files, when the model has them.
    pub modules: Option<PathBuf>,
    pub sentence_bert_config: Option<PathBuf>,
    pub pooling_config: Option<PathBuf>,
    /// The `Dense` module `modules.json` lists, when there is one.
    pub dense: Option<DenseFiles>,
}

/// The files embedtune reads, relative to the model root.
pub(crate) const CONFIG: &str = "config.json";
pub(crate) const SAFETENSORS: &str = "model.safetensors";
pub(crate) const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
pub(crate) const PYTORCH_BIN: &str = "pytorch_model.bin";
pub(crate) const TOKENIZER_JSON: &str = "tokenizer.json";
pub(crate) const VOCAB: &str = "vocab.txt";
pub(crate) const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub(crate) const MODULES: &str = "modules.json";
pub(crate) const SBERT_CONFIG: &str = "sentence_bert_config.json";
pub(crate) const POOLING_CONFIG: &str = "1_Pooling/config.json";

/// A place files can be looked up in: a folder, or a Hub repository.
pub(crate) trait FileStore {
    /// The local path of `name`, or `None` when the store does not have it.
    fn file(&mut self, name: &str) -> Result<Option<PathBuf>>;
    /// Where files were looked for, for error messages.
    fn describe(&self) -> String;
}

struct FolderStore(PathBuf);

impl FileStore for FolderStore {
    fn file(&mut self, name: &str) -> Result<Option<PathBuf>> {
        let path = self.0.join(name);
        Ok(path.is_file().then_some(path))
    }
    fn describe(&self) -> String {
        format!("folder {}", self.0.display())
    }
}

impl ModelFiles {
    /// Resolves `--model` text (a folder or a Hub id) to local files,
    /// downloading from the Hub when needed and allowed.
    pub fn resolve(spec: &str) -> Result<Self> {
        match ModelSource::parse(spec)? {
            ModelSource::Local(dir) => Self::collect(spec, &dir, &mut FolderStore(dir.clone())),
            ModelSource::Hub { repo, revision } => {
                let from_hub = || -> Result<Self> {
                    let mut store = hub::HubStore::open(&repo, revision.as_deref())?;
                    let files = Self::collect(spec, &PathBuf::new(), &mut store)?;
                    let dir = files
                        .config
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    Ok(ModelFiles { dir, ..files })
                };
                from_hub().map_err(|e| also_not_a_folder(spec, e))
            }
        }
    }

    fn collect(name: &str, dir: &Path, store: &mut dyn FileStore) -> Result<Self> {
        let missing = |what: &str, store: &dyn FileStore| Error::Model {
            model: name.to_string(),
            message: format!("no {what} in {}", store.describe()),
        };
        let config = store.file(CONFIG)?.ok_or_else(|| missing(CONFIG, store))?;
        let weights = if let Some(index) = store.file(SAFETENSORS_INDEX)? {
            let shards = shard_names(&index)?;
            let mut paths = Vec::with_capacity(shards.len());
            for shard in shards {
                paths.push(
                    store
                        .file(&shard)?
                        .ok_or_else(|| missing(&format!("shard {shard}"), store))?,
                );
            }
            WeightFiles::SafeTensors(paths)
        } else if let Some(st) = store.file(SAFETENSORS)? {
            WeightFiles::SafeTensors(vec![st])
        } else if let Some(bin) = store.file(PYTORCH_BIN)? {
            WeightFiles::PytorchBin(bin)
        } else {
            return Err(missing(
                &format!("weights ({SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN})"),
                store,
            ));
        };
        let tokenizer = if let Some(json) = store.file(TOKENIZER_JSON)? {
            TokenizerFiles::Json(json)
        } else if let Some(vocab) = store.file(VOCAB)? {
            TokenizerFiles::Vocab {
                vocab,
                config: store.file(TOKENIZER_CONFIG)?,
            }
        } else {
            return Err(missing(
                &format!("tokenizer ({TOKENIZER_JSON} or {VOCAB})"),
                store,
            ));
        };
        let modules = store.file(MODULES)?;
        let dense = match &modules {
            Some(path) => dense_files(path, store)?,
            None => None,
        };
        Ok(ModelFiles {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
            modules,
            dense,
            sentence_bert_config: store.file(SBERT_CONFIG)?,
            pooling_config: store.file(POOLING_CONFIG)?,
        })
    }
}

/// The files of the Dense module that `modules` lists, if any.
fn dense_files(modules: &Path, store: &mut dyn FileStore) -> Result<Option<DenseFiles>> {
    let Some(folder) = sbert::dense_folder(modules)? else {
        return Ok(None);
    };
    let missing = |what: &str, store: &dyn FileStore| Error::Config {
        path: modules.to_path_buf(),
        message: format!(
            "the Dense module has no {folder}/{what} in {}",
            store.describe()
        ),
    };
    let config = store
        .file(&format!("{folder}/{}", dense::CONFIG))?
        .ok_or_else(|| missing(dense::CONFIG, store))?;
    let weights = match store.file(&format!("{folder}/{}", dense::WEIGHTS))? {
        Some(p) => p,
        None => store
            .file(&format!("{folder}/{}", dense::WEIGHTS_BIN))?
            .ok_or_else(|| missing(dense::WEIGHTS, store))?,
    };
    Ok(Some(DenseFiles { config, weights }))
}

/// A Hub id that failed might have been meant as a relative folder (`a/b`):
/// the error says where both were looked for.
fn also_not_a_folder(spec: &str, e: Error) -> Error {
    let hub = match e {
        Error::Model { message, .. } => message,
        e => e.to_string(),
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    Error::Model {
        model: spec.to_string(),
        message: format!(
            "no such folder ({} does not exist) and not on the Hub: {hub}",
            cwd.join(spec).display()
        ),
    }
}

/// The distinct shard file names listed in a safetensors index.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = crate::source::read_to_string(index)?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_hub_ids_and_paths() {
        assert_eq!(
            ModelSource::parse("bert-base-uncased").unwrap(),
            ModelSource::Hub {
                repo: "bert-base-uncased".into(),
                revision: None
            }
        );
        assert_eq!(
            ModelSource::parse("org/name@v1.0").unwrap(),
            ModelSource::Hub {
                repo: "org/name".into(),
                revision: Some("v1.0".into())
            }
        );
        assert!(ModelSource::parse("./definitely/not/here").is_err());
        assert!(ModelSource::parse("/no/such/dir/").is_err());
        assert!(ModelSource::parse("org/name@").is_err());
        assert!(ModelSource::parse("bad id!").is_err());
    }
}
