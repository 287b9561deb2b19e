//! `whiten` on a tiny random BERT: the saved Dense module whitens, loads
//! everywhere (embed, fit on top of it), sits before Normalize; bad inputs
//! fail cleanly.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{assert_clean_error, corpus, embedtune, tiny_model};
use embedtune::training::{self, Corpus, CorpusOptions, FitJob, FitOutcome, Quiet, TrainConfig};
use embedtune::whiten::{self, Method, Moments, Silent, WhitenJob};
use embedtune::{DeviceSpec, Embedder, EmbedderOptions, Pooling};

fn corpus_options() -> CorpusOptions {
    CorpusOptions {
        holdout: 40,
        seed: 3,
        ..Default::default()
    }
}

fn job(model: &Path, data: &Path, out: &Path, method: Method) -> WhitenJob {
    WhitenJob {
        model: model.to_str().unwrap().into(),
        data: data.into(),
        out: out.into(),
        corpus: corpus_options(),
        method,
        pooling: Some(Pooling::Mean),
        max_len: Some(16),
        batch_size: 32,
        device: DeviceSpec::Cpu,
        eval_sts: None,
        overwrite: false,
    }
}

fn load(model: &Path) -> Embedder {
    Embedder::from_pretrained(
        model.to_str().unwrap(),
        EmbedderOptions {
            device: DeviceSpec::Cpu,
            normalize: Some(false),
            max_len: Some(16),
            ..Default::default()
        },
    )
    .unwrap()
}

/// The training split `whiten` computed its map from.
fn train_texts(data: &Path) -> Vec<String> {
    let c = Corpus::open(data, corpus_options()).unwrap();
    c.epoch(0).map(Result::unwrap).collect()
}

/// The tiny model with a modules.json that normalises.
fn normalising_model(dir: &Path) -> std::path::PathBuf {
    let m = tiny_model(dir);
    let modules = serde_json::json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    ]);
    std::fs::write(m.join("modules.json"), modules.to_string()).unwrap();
    m
}

#[test]
fn whitened_folder_whitens_and_loads_with_its_dense_module() {
    let dir = tempfile::tempdir().unwrap();
    let model = normalising_model(dir.path());
    let data = corpus(dir.path(), 300);
    let out = dir.path().join("white");
    // LayerNorm outputs lie in a hyperplane (here Σx = 0: LayerNorm is at
    // its initialisation), so the data span 31 directions; keep 24.
    let report = whiten::whiten(
        &job(&model, &data, &out, Method::Whitening { dim: Some(24) }),
        &mut Silent,
    )
    .unwrap();
    assert_eq!((report.in_features, report.out_features), (32, 24));
    assert!(report.after.avg_cosine.abs() < report.before.avg_cosine.abs());

    // Dense between pooling and Normalize, in sentence-transformers' layout.
    let modules: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("modules.json")).unwrap()).unwrap();
    let kinds: Vec<&str> = modules
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds[2].ends_with("models.Dense") && kinds[3].ends_with("models.Normalize"),
        "{kinds:?}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("2_Dense/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        cfg["activation_function"],
        "torch.nn.modules.linear.Identity"
    );
    assert_eq!(cfg["bias"], true);
    let tensors =
        candle_core::safetensors::load(out.join("2_Dense/model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(tensors["linear.weight"].dims(), [24, 32]);
    assert_eq!(tensors["linear.bias"].dims(), [24]);
    for f in [
        "README.md",
        "report.json",
        "figures/circle.svg",
        "figures/alignment_histogram.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // On the sentences it was computed from: zero mean, identity covariance.
    let texts = train_texts(&data);
    let white = load(&out);
    assert_eq!(white.dim(), 24);
    let e = white.embed_all(&texts, &mut |_| {}).unwrap();
    let mut m = Moments::new(24);
    m.add(&e).unwrap();
    assert!(m.mean().iter().all(|v| v.abs() < 1e-3), "{:?}", m.mean());
    let cov = m.covariance();
    for i in 0..24 {
        for j in 0..24 {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!(
                (cov[(i, j)] - want).abs() < 1e-2,
                "cov[{i},{j}] = {}",
                cov[(i, j)]
            );
        }
    }
    // …and it is the base embedding through x·Wᵀ + b.
    let base = Embedder::from_pretrained(
        model.to_str().unwrap(),
        EmbedderOptions {
            pooling: Some(Pooling::Mean),
            normalize: Some(false),
            max_len: Some(16),
            device: DeviceSpec::Cpu,
            ..Default::default()
        },
    )
    .unwrap()
    .embed_all(&texts[..5], &mut |_| {})
    .unwrap();
    let x = Tensor::from_slice(&base.data, (5, 32), &Device::Cpu).unwrap();
    let y = x
        .matmul(&tensors["linear.weight"].t().unwrap())
        .unwrap()
        .broadcast_add(&tensors["linear.bias"])
        .unwrap();
    let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    let d = y
        .iter()
        .zip(&e.data[..5 * 24])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-4, "{d}");
}

#[test]
fn truncated_whitening_and_abtt_keep_their_dimensions() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 300);
    let out = dir.path().join("k8");
    whiten::whiten(
        &job(&model, &data, &out, Method::Whitening { dim: Some(8) }),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(load(&out).dim(), 8);
    let abtt = dir.path().join("abtt");
    let r = whiten::whiten(
        &job(&model, &data, &abtt, Method::Abtt { remove: 2 }),
        &mut Silent,
    )
    .unwrap();
    assert_eq!((r.out_features, load(&abtt).dim()), (32, 32));
}

#[test]
fn fit_trains_through_a_frozen_dense_module() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 300);
    let white = dir.path().join("white");
    whiten::whiten(
        &job(&model, &data, &white, Method::Whitening { dim: Some(16) }),
        &mut Silent,
    )
    .unwrap();
    let out = dir.path().join("fit");
    let fit = FitJob {
        model: white.to_str().unwrap().into(),
        data: data.clone(),
        out: out.clone(),
        corpus: corpus_options(),
        train: TrainConfig {
            lr: 5e-4,
            batch_size: 16,
            mini_batch: Some(10),
            steps: Some(3),
            eval_every: 0,
            ..TrainConfig::default()
        },
        pooling: None,
        max_len: 16,
        device: DeviceSpec::Cpu,
        dtype: DType::F32,
        eval_sts: None,
        resume: false,
        overwrite: false,
        post: None,
    };
    let FitOutcome::Done(_) = training::fit(&fit, &mut Quiet).unwrap() else {
        panic!("interrupted")
    };
    // The Dense module travels unchanged; the encoder moved.
    let read = |p: &Path| std::fs::read(p.join("2_Dense/model.safetensors")).unwrap();
    assert_eq!(read(&white), read(&out));
    assert_eq!(load(&out).dim(), 16);
    let text = ["the cat sleeps under the tree ."];
    assert_ne!(
        load(&white).embed(&text).unwrap(),
        load(&out).embed(&text).unwrap()
    );
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = corpus(dir.path(), 300);
    let m = model.to_str().unwrap();
    let d = data.to_str().unwrap();
    let out = dir.path().join("o");
    let o = out.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "whiten",
            "--model",
            m,
            "--data",
            d,
            "--out",
            o,
            "--device",
            "cpu",
            "--holdout",
            "40",
        ];
        args.extend(extra);
        embedtune(&args)
    };
    assert_clean_error(
        &run(&["--dim", "33"]),
        "--dim 33: must be between 1 and the embedding dimension 32",
    );
    assert_clean_error(
        &run(&["--method", "abtt", "--remove", "40"]),
        "embedding dimension 32",
    );
    assert!(!out.exists(), "nothing written before the checks");
    // Some twenty sentences cannot whiten 32 dimensions.
    let small = dir.path().join("small.txt");
    std::fs::write(
        &small,
        std::fs::read_to_string(&data)
            .unwrap()
            .lines()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let s = small.to_str().unwrap();
    let few = embedtune(&[
        "whiten",
        "--model",
        m,
        "--data",
        s,
        "--out",
        o,
        "--device",
        "cpu",
        "--holdout",
        "40",
    ]);
    assert_clean_error(&few, "needs more sentences than dimensions (32)");
    // A whitened model cannot be whitened again.
    assert!(run(&["--dim", "8"]).status.success());
    let again = dir.path().join("again");
    let twice = embedtune(&[
        "whiten",
        "--model",
        o,
        "--data",
        d,
        "--out",
        again.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_clean_error(&twice, "already has a Dense module");
    assert_clean_error(&run(&["--dim", "8"]), "not empty");
}
