//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor, Var};
use embedtune::layers::DropoutSeed;
use embedtune::models::{LoadedEncoder, ModelConfig, init_weights};
use embedtune::pooling::Pooling;
use embedtune::rng::Rng;
use embedtune::tokenize::Batch;

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

/// Runs `embedtune embed --model MODEL --data DATA --out OUT EXTRA…`.
pub fn embed(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    embedtune(&args)
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
    let config = ModelConfig::from_value(cfg).unwrap();
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

/// A loss that reads two hidden states (first-last-avg) and the last one
/// (CLS), so gradients enter the encoder at more than one layer.
pub fn loss_of(out: &embedtune::models::EncoderOutput, batch: &Batch) -> Tensor {
    let fla = Pooling::FirstLastAvg
        .pool(out, &batch.attention_mask)
        .unwrap();
    let cls = Pooling::Cls.pool(out, &batch.attention_mask).unwrap();
    let (b, h) = cls.dims2().unwrap();
    let r: Vec<f32> = (0..b * h)
        .map(|k| ((k * 7919) % 13) as f32 / 13.0 - 0.4)
        .collect();
    let r = Tensor::from_vec(r, (b, h), &Device::Cpu).unwrap();
    (fla.mul(&r).unwrap().sum_all().unwrap() + cls.sqr().unwrap().sum_all().unwrap()).unwrap()
}

/// Largest difference over real tokens (the CPU path leaves padding zero;
/// no pooling reads it).
pub fn max_token_diff(a: &Tensor, b: &Tensor, batch: &Batch) -> f32 {
    let mask = batch
        .attention_mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(2)
        .unwrap();
    max_abs_diff(
        &a.broadcast_mul(&mask).unwrap(),
        &b.broadcast_mul(&mask).unwrap(),
    )
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The trainable variables of a model, sorted by name.
pub fn vars(model: &LoadedEncoder) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = model.weights.vars().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The hand-written CPU training pass equals the candle graph on `batch`
/// with dropout `seed`: hidden states, loss and every weight's gradient.
pub fn assert_cpu_pass_matches_graph(model: &LoadedEncoder, batch: &Batch, seed: DropoutSeed) {
    let batch = batch.clone();
    let graph_out = model.encoder.forward_graph(&batch, Some(seed)).unwrap();
    let graph_loss = loss_of(&graph_out, &batch);
    let graph_grads = graph_loss.backward().unwrap();

    let pass = model
        .encoder
        .forward_train(&batch, seed)
        .unwrap()
        .expect("f32 on the CPU has a hand-written pass");
    // Same dropout masks, so the same outputs.
    for (a, b) in graph_out
        .hidden_states
        .iter()
        .zip(&pass.output().hidden_states)
    {
        assert!(max_token_diff(a, b, &batch) < 1e-5, "hidden states differ");
    }
    let cpu_loss = loss_of(pass.output(), &batch);
    let mut cpu_grads = cpu_loss.backward().unwrap();
    pass.backward(&mut cpu_grads).unwrap();
    let (gl, cl) = (
        graph_loss.to_scalar::<f32>().unwrap(),
        cpu_loss.to_scalar::<f32>().unwrap(),
    );
    assert!((gl - cl).abs() < 1e-4 * gl.abs().max(1.0), "{gl} vs {cl}");

    for (name, var) in vars(model) {
        let g = graph_grads.get(var.as_tensor()).unwrap();
        let c = cpu_grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("CPU pass gave no gradient for {name}"));
        assert_eq!(g.shape(), c.shape(), "{name}");
        let scale = g
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = max_abs_diff(g, c);
        assert!(
            diff <= 1e-4 * scale.max(1e-3),
            "{name}: max |graph − cpu| = {diff:e} (largest gradient {scale:e})"
        );
    }
}

/// A scalar loss of the pooled train-mode output, with fixed dropout masks.
pub fn pooled_loss(model: &LoadedEncoder, batch: &Batch, seed: DropoutSeed) -> Tensor {
    let out = model.encoder.forward_graph(batch, Some(seed)).unwrap();
    let pooled = Pooling::Mean.pool(&out, &batch.attention_mask).unwrap();
    let (b, h) = pooled.dims2().unwrap();
    let weights: Vec<f64> = (0..b * h)
        .map(|k| ((k * 7919) % 13) as f64 / 13.0 - 0.4)
        .collect();
    let r = Tensor::from_vec(weights, (b, h), &Device::Cpu)
        .unwrap()
        .to_dtype(pooled.dtype())
        .unwrap();
    // Squares make the loss depend on the pooled vectors non-linearly.
    (pooled.mul(&r).unwrap().sum_all().unwrap() + pooled.sqr().unwrap().sum_all().unwrap()).unwrap()
}

/// Every weight of a trainable `model` gets a finite, non-zero gradient
/// through the candle graph; `count` weights in all.
pub fn assert_every_weight_gets_a_gradient(model: &LoadedEncoder, batch: &Batch, count: usize) {
    let grads = pooled_loss(model, batch, DropoutSeed(11))
        .backward()
        .unwrap();
    let vars = vars(model);
    assert_eq!(vars.len(), count);
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let values: Vec<f64> = g
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{name}: non-finite gradient"
        );
        assert!(values.iter().any(|v| *v != 0.0), "{name}: zero gradient");
    }
}

/// Analytic gradients (candle graph, f64 weights) of the elements `probes`
/// agree with central finite differences.
pub fn assert_gradients_match_finite_differences(
    model: &LoadedEncoder,
    batch: &Batch,
    seed: DropoutSeed,
    probes: &[(&str, usize)],
) {
    let grads = pooled_loss(model, batch, seed).backward().unwrap();
    let vars = vars(model);
    let eps = 1e-6;
    for &(name, k) in probes {
        let var = &vars
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no weight {name}"))
            .1;
        let analytic: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let original = var.as_tensor().copy().unwrap();
        let shape = original.shape().clone();
        let mut flat: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
        let at = |flat: &Vec<f64>| {
            var.set(&Tensor::from_vec(flat.clone(), shape.clone(), &Device::Cpu).unwrap())
                .unwrap();
            pooled_loss(model, batch, seed).to_scalar::<f64>().unwrap()
        };
        let x = flat[k];
        flat[k] = x + eps;
        let up = at(&flat);
        flat[k] = x - eps;
        let down = at(&flat);
        flat[k] = x;
        at(&flat);
        let numeric = (up - down) / (2.0 * eps);
        let rel = (numeric - analytic[k]).abs() / numeric.abs().max(analytic[k].abs()).max(1e-8);
        assert!(
            rel < 1e-2,
            "{name}[{k}]: analytic {} vs numeric {numeric} (rel {rel})",
            analytic[k]
        );
    }
}
