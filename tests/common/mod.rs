//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use embedtune::models::bert::{BertConfig, init_weights};
use embedtune::rng::Rng;

/// The real model the heavier tests use: `EMBEDTUNE_TEST_MODEL`, else
/// `../shared/models/all-MiniLM-L6-v2`. When it is absent the test fails
/// under CI and is skipped (with a notice) elsewhere.
pub fn test_model() -> Option<PathBuf> {
    let path = std::env::var_os("EMBEDTUNE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared_dir().join("models/all-MiniLM-L6-v2"));
    if path.join("config.json").is_file() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "test model not found at {} (set EMBEDTUNE_TEST_MODEL)",
            path.display()
        );
    }
    eprintln!(
        "skipping: test model not found at {} (set EMBEDTUNE_TEST_MODEL)",
        path.display()
    );
    None
}

/// `../shared` beside the repository.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// A file under `../shared/data`, or `None` (failing under CI) when absent.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let path = shared_dir().join("data").join(rel);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("shared data not found at {}", path.display());
    }
    eprintln!("skipping: shared data not found at {}", path.display());
    None
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Cosine similarity of two vectors, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Runs the embedtune binary offline.
pub fn embedtune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_embedtune"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// Asserts a clean failure: non-zero exit, one line on stderr, no panic.
pub fn assert_clean_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "`{needle}` not in: {stderr}"
    );
}

/// A copy of a model folder at `out` (files linked) without `skip`, with
/// `extra` files written in place of (or beside) the originals.
pub fn model_variant(
    model: &Path,
    out: &Path,
    skip: &[&str],
    extra: &[(&str, Vec<u8>)],
) -> PathBuf {
    std::fs::create_dir_all(out).unwrap();
    for entry in std::fs::read_dir(model).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if skip.contains(&name.as_str()) || extra.iter().any(|(n, _)| *n == name) {
            continue;
        }
        std::os::unix::fs::symlink(entry.path().canonicalize().unwrap(), out.join(&name)).unwrap();
    }
    for (name, bytes) in extra {
        std::fs::write(out.join(name), bytes).unwrap();
    }
    out.to_path_buf()
}

pub const WORDS: &[&str] = &[
    "the", "a", "cat", "dog", "runs", "sleeps", "house", "red", "blue", "green", "quickly",
    "slowly", "river", "tree", "bird", "sings", "under", "over", "sun", "moon", "eats", "bread",
    "old", "young", "man", "woman", "child", "plays", "ball", "garden", "walks", "reads", "book",
    "night", "day",
];

/// A tiny BERT folder: config.json, vocab.txt (no tokenizer.json), weights.
pub fn tiny_model(dir: &Path) -> PathBuf {
    tiny_model_sized(dir, "tiny", 32, 2)
}

/// A random BERT of `hidden` size and `layers` layers in `dir/name`.
pub fn tiny_model_sized(dir: &Path, name: &str, hidden: usize, layers: usize) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let mut vocab = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    vocab.extend(WORDS);
    vocab.push(".");
    std::fs::write(out.join("vocab.txt"), vocab.join("\n")).unwrap();
    let cfg = serde_json::json!({
        "model_type": "bert", "vocab_size": vocab.len(), "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": 4, "intermediate_size": 2 * hidden, "max_position_embeddings": 64,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu"
    });
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    let config: BertConfig = serde_json::from_value(cfg).unwrap();
    let weights: HashMap<String, Tensor> = init_weights(&config, 1, DType::F32, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (format!("bert.{k}"), v))
        .chain([(
            "bert.pooler.dense.bias".to_string(),
            Tensor::ones(hidden, DType::F32, &Device::Cpu).unwrap(),
        )])
        .collect();
    candle_core::safetensors::save(&weights, out.join("model.safetensors")).unwrap();
    out
}

pub fn corpus(dir: &Path, n: usize) -> PathBuf {
    let mut rng = Rng::new(5);
    let lines: Vec<String> = (0..n)
        .map(|_| {
            let len = 3 + rng.below(6) as usize;
            let mut s: Vec<&str> = (0..len)
                .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                .collect();
            s.push(".");
            s.join(" ")
        })
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// A Parquet file at `path` with one nullable string column `text`, written
/// with `compression` (none when `None`).
pub fn write_parquet_texts(
    path: &Path,
    rows: &[Option<&str>],
    compression: Option<parquet::basic::Compression>,
) {
    use std::sync::Arc;
    let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
        "text",
        arrow::datatypes::DataType::Utf8,
        true,
    )]);
    let col = arrow::array::StringArray::from(rows.to_vec());
    let batch = arrow::array::RecordBatch::try_new(Arc::new(schema), vec![Arc::new(col)]).unwrap();
    let props = compression.map(|c| {
        parquet::file::properties::WriterProperties::builder()
            .set_compression(c)
            .build()
    });
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), props).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}
