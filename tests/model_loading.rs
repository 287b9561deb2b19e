//! Models resolve from the Hugging Face cache offline, from checkpoints with
//! other weight-name layouts, and from a bare vocab.txt tokenizer.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};

const TEXTS: &str = "A man is playing a guitar.\nA woman slices an onion.\nThe sky is blue.\n";

/// Runs `embed` and returns the output file's text.
fn embed(model: &str, env: &[(&str, &Path)], dir: &Path, tag: &str) -> Result<String, String> {
    let data = dir.join("in.txt");
    std::fs::write(&data, TEXTS).unwrap();
    let out = dir.join(format!("{tag}.jsonl"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedtune"));
    cmd.args([
        "embed",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .env("HF_HUB_OFFLINE", "1")
    .env_remove("HF_HUB_CACHE")
    .env_remove("HF_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let res = cmd.output().unwrap();
    if !res.status.success() {
        return Err(String::from_utf8_lossy(&res.stderr).to_string());
    }
    Ok(std::fs::read_to_string(out).unwrap())
}

#[test]
fn hub_ids_resolve_from_the_cache_offline() {
    let Some(model) = common::test_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let reference = embed(model.to_str().unwrap(), &[], dir.path(), "folder").unwrap();

    // huggingface_hub's layout: models--org--name/{refs/main, snapshots/<commit>/…}.
    let cache = dir.path().join("hub");
    let repo = cache.join("models--acme--minilm");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    common::model_variant(&model, &repo.join("snapshots").join(commit), &[], &[]);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();

    let env = [("HF_HUB_CACHE", cache.as_path())];
    assert_eq!(
        embed("acme/minilm", &env, dir.path(), "hub").unwrap(),
        reference
    );
    // A revision given as a commit hash.
    let pinned = format!("acme/minilm@{commit}");
    assert_eq!(
        embed(&pinned, &env, dir.path(), "pinned").unwrap(),
        reference
    );
    // HF_HOME/hub is the cache when HF_HUB_CACHE is unset.
    let home = [("HF_HOME", dir.path())];
    assert_eq!(
        embed("acme/minilm", &home, dir.path(), "home").unwrap(),
        reference
    );
    // A model that is not cached: a clear error naming the cache.
    let err = embed("acme/other", &env, dir.path(), "missing").unwrap_err();
    assert!(
        err.contains("no config.json in Hub repository acme/other"),
        "{err}"
    );
    assert!(err.contains(cache.to_str().unwrap()), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
}

#[test]
fn vocab_txt_tokenizer_matches_tokenizer_json() {
    let Some(model) = common::test_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let reference = embed(model.to_str().unwrap(), &[], dir.path(), "json").unwrap();
    let vocab_only = common::model_variant(
        &model,
        &dir.path().join("vocab-only"),
        &["tokenizer.json"],
        &[],
    );
    assert_eq!(
        embed(vocab_only.to_str().unwrap(), &[], dir.path(), "vocab").unwrap(),
        reference
    );
}

#[test]
fn bert_prefix_and_legacy_layer_norm_names_load() {
    let Some(model) = common::test_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let reference = embed(model.to_str().unwrap(), &[], dir.path(), "plain").unwrap();
    let legacy = common::model_variant(
        &model,
        &dir.path().join("legacy"),
        &["model.safetensors"],
        &[],
    );
    let tensors =
        candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut renamed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, t)| {
            let name = name
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (format!("bert.{name}"), t)
        })
        .collect();
    // Heads that real checkpoints carry are ignored.
    renamed.insert(
        "cls.predictions.bias".into(),
        Tensor::zeros(30522, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&renamed, legacy.join("model.safetensors")).unwrap();
    assert_eq!(
        embed(legacy.to_str().unwrap(), &[], dir.path(), "legacy").unwrap(),
        reference
    );
}
