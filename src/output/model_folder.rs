//! Saving a model folder in the Hugging Face + sentence-transformers layout,
//! loadable by `SentenceTransformer(DIR)`, `transformers` and embedtune.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use candle_core::Tensor;
use serde_json::json;

use crate::dense::{self, Dense};
use crate::error::{Error, Result};
use crate::models::ModelFiles;
use crate::output::{AtomicFile, TempPath};
use crate::pooling::Pooling;

/// What goes into the folder besides the base model's config and tokenizer.
pub struct ModelFolder<'a> {
    pub base: &'a ModelFiles,
    /// Weights under the names the base checkpoint used.
    pub weights: &'a BTreeMap<String, Tensor>,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: usize,
    pub hidden_size: usize,
    /// Written as `2_Dense/`, between pooling and normalising.
    pub dense: Option<&'a Dense>,
}

/// Pooling modes sentence-transformers can express.
pub fn check_pooling(pooling: Pooling) -> Result<()> {
    if pooling == Pooling::FirstLastAvg {
        return Err(Error::Invalid(
            "first-last-avg pooling has no sentence-transformers equivalent, so the model could not be saved in its layout; use cls, mean or max".into(),
        ));
    }
    Ok(())
}

/// Makes `out` ready for a new model folder: refuses a file, or a non-empty
/// folder unless `overwrite`; creates it and checks it can be written.
pub fn prepare_out_dir(out: &Path, overwrite: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(Error::data(out, "exists and is not a folder"));
    }
    let non_empty = out.is_dir()
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
    if non_empty && !overwrite {
        return Err(Error::data(
            out,
            "is not empty; pass --overwrite to replace it",
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let probe = out.join(format!(".embedtune-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| Error::io(out, e))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.commit()
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Invalid(e.to_string()))?;
    write_file(path, text.as_bytes())
}

/// Writes safetensors atomically (temporary name, then rename), readable by
/// others as any file this process creates (the safetensors writer's own
/// temporary file is private, mode 0600). Errors name `path`.
pub fn save_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let tmp = TempPath::beside(path)?;
    // A file created here gets the usual mode (0666 less the umask).
    let mode = std::fs::File::create(tmp.path())
        .and_then(|f| f.metadata())
        .map_err(|e| Error::io(tmp.path(), e))?
        .permissions();
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    candle_core::safetensors::save(&map, tmp.path()).map_err(|e| {
        let e = crate::error::without_backtrace(e);
        Error::data(path, format!("cannot write: {e}"))
    })?;
    std::fs::set_permissions(tmp.path(), mode).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist()
}

impl ModelFolder<'_> {
    pub fn save(&self, dir: &Path) -> Result<()> {
        check_pooling(self.pooling)?;
        std::fs::create_dir_all(dir.join("1_Pooling")).map_err(|e| Error::io(dir, e))?;
        let copy = |src: &Path, name: &str| -> Result<()> {
            let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
            write_file(&dir.join(name), &bytes)
        };
        copy(&self.base.config, "config.json")?;
        match &self.base.tokenizer {
            crate::models::files::TokenizerFiles::Json(p) => copy(p, "tokenizer.json")?,
            crate::models::files::TokenizerFiles::Vocab { vocab, .. } => copy(vocab, "vocab.txt")?,
        }
        // The rest of the tokenizer files travel when the base has them.
        for name in [
            "vocab.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            let src = self.base.config.with_file_name(name);
            if src.is_file() && !dir.join(name).is_file() {
                copy(&src, name)?;
            }
        }
        save_safetensors(&dir.join("model.safetensors"), self.weights)?;

        let mut modules = vec![
            json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
            json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
        ];
        if let Some(d) = self.dense {
            d.save(&dir.join(dense::DIR))?;
            modules.push(json!({"idx": 2, "name": "2", "path": dense::DIR, "type": "sentence_transformers.models.Dense"}));
        }
        if self.normalize {
            let idx = modules.len();
            let path = format!("{idx}_Normalize");
            std::fs::create_dir_all(dir.join(&path)).map_err(|e| Error::io(dir, e))?;
            modules.push(json!({"idx": idx, "name": idx.to_string(), "path": path, "type": "sentence_transformers.models.Normalize"}));
        }
        write_json(&dir.join("modules.json"), &json!(modules))?;
        write_json(
            &dir.join("1_Pooling/config.json"),
            &json!({
                "word_embedding_dimension": self.hidden_size,
                "pooling_mode_cls_token": self.pooling == Pooling::Cls,
                "pooling_mode_mean_tokens": self.pooling == Pooling::Mean,
                "pooling_mode_max_tokens": self.pooling == Pooling::Max,
                "pooling_mode_mean_sqrt_len_tokens": false,
                "pooling_mode_weightedmean_tokens": false,
                "pooling_mode_lasttoken": false,
                "include_prompt": true
            }),
        )?;
        write_json(
            &dir.join("sentence_bert_config.json"),
            &json!({"max_seq_length": self.max_seq_length, "do_lower_case": false}),
        )?;
        let st_config = self
            .base
            .config
            .with_file_name("config_sentence_transformers.json");
        if st_config.is_file() {
            copy(&st_config, "config_sentence_transformers.json")?;
        } else {
            write_json(
                &dir.join("config_sentence_transformers.json"),
                &json!({"prompts": {}, "default_prompt_name": null, "similarity_fn_name": "cosine"}),
            )?;
        }
        Ok(())
    }
}
