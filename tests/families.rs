//! Every encoder family on its tiny fixture (tests/fixtures/families, made
//! by scripts/reference/make_family_fixtures.py with PyTorch
//! transformers): embeddings equal PyTorch's, the CPU pass equals the
//! graph, gradients reach every weight and agree with finite differences,
//! dropout is seeded, the CLI runs end to end, weight-name variants load,
//! and an unsupported family is one clear error.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{assert_clean_error, embed, embedtune};
use embedtune::layers::DropoutSeed;
use embedtune::tokenize::Batch;
use embedtune::{DeviceSpec, Embedder, EmbedderOptions, Pooling};
use serde::Deserialize;

struct Family {
    dir: &'static str,
    /// Whether the hand-written CPU pass runs it.
    cpu_pass: bool,
    /// Weights the encoder takes.
    weights: usize,
    /// The prefix checkpoints with a head put before the names.
    prefix: &'static str,
    /// Weight elements checked against finite differences.
    probes: &'static [(&'static str, usize)],
}

const ROBERTA_PROBES: &[(&str, usize)] = &[
    ("embeddings.LayerNorm.weight", 4),
    ("encoder.layer.0.attention.self.query.weight", 37),
    ("encoder.layer.1.output.dense.bias", 9),
];

const FAMILIES: &[Family] = &[
    Family {
        dir: "roberta",
        cpu_pass: true,
        weights: 5 + 16 * 2,
        prefix: "roberta.",
        probes: ROBERTA_PROBES,
    },
    Family {
        dir: "xlm-roberta",
        cpu_pass: true,
        weights: 5 + 16 * 2,
        prefix: "roberta.",
        probes: ROBERTA_PROBES,
    },
    Family {
        dir: "distilbert",
        cpu_pass: true,
        weights: 4 + 16 * 2,
        prefix: "distilbert.",
        probes: &[
            ("embeddings.position_embeddings.weight", 2 * 32 + 1),
            ("transformer.layer.0.attention.q_lin.weight", 37),
            ("transformer.layer.1.ffn.lin2.bias", 9),
        ],
    },
    Family {
        dir: "mpnet",
        cpu_pass: true,
        weights: 4 + 16 * 2 + 1,
        prefix: "mpnet.",
        probes: &[
            // Buckets 0 (same position) and 17 (one ahead), heads 1 and 2.
            ("encoder.relative_attention_bias.weight", 1),
            ("encoder.relative_attention_bias.weight", 17 * 4 + 2),
            ("encoder.layer.0.attention.attn.q.weight", 37),
        ],
    },
    Family {
        dir: "modernbert",
        cpu_pass: false,
        // Embeddings and their norm, 5 per layer (+ attn_norm after
        // layer 0), the final norm; no biases.
        weights: 2 + 5 * 3 + 2 + 1,
        prefix: "model.",
        probes: &[
            ("layers.0.attn.Wqkv.weight", 37),
            ("layers.1.attn_norm.weight", 4),
            ("layers.1.attn.Wo.weight", 50),
            ("layers.2.mlp.Wi.weight", 100),
            ("final_norm.weight", 3),
        ],
    },
];

fn dir(family: &Family) -> PathBuf {
    common::fixture("families").join(family.dir)
}

#[derive(Deserialize)]
struct Reference {
    max_len: usize,
    sentences: Vec<String>,
    token_counts: Vec<usize>,
    cls_raw: Vec<Vec<f32>>,
    mean_normalized: Vec<Vec<f32>>,
}

fn reference(family: &Family) -> Reference {
    let text = std::fs::read_to_string(dir(family).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn embedder(
    model: &Path,
    pooling: Pooling,
    normalize: bool,
    dtype: DType,
    trainable: bool,
) -> Embedder {
    Embedder::from_pretrained(
        model.to_str().unwrap(),
        EmbedderOptions {
            pooling: Some(pooling),
            normalize: Some(normalize),
            batch_size: 8,
            device: DeviceSpec::Cpu,
            dtype,
            trainable,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Worst |difference| and worst cosine against the reference rows.
fn compare(got: &[Vec<f32>], expected: &[Vec<f32>]) -> (f32, f64) {
    let mut worst = (0f32, 1f64);
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g.len(), e.len());
        for (a, b) in g.iter().zip(e) {
            worst.0 = worst.0.max((a - b).abs());
        }
        worst.1 = worst.1.min(common::cosine(g, e));
    }
    worst
}

fn check_parity(name: &str, model: &Path, fx: &Reference) {
    for (pooling, normalize, expected) in [
        (Pooling::Cls, false, &fx.cls_raw),
        (Pooling::Mean, true, &fx.mean_normalized),
    ] {
        let e = embedder(model, pooling, normalize, DType::F32, false);
        assert_eq!(e.max_len(), fx.max_len, "{name}");
        let counts: Vec<usize> = e
            .tokenizer()
            .encode_all(&fx.sentences)
            .unwrap()
            .iter()
            .map(|x| x.ids.len())
            .collect();
        assert_eq!(counts, fx.token_counts, "{name}: tokenization differs");
        let (diff, cos) = compare(&e.embed(&fx.sentences).unwrap(), expected);
        eprintln!("{name} {pooling}: max |diff| {diff:e}, min cosine {cos}");
        assert!(diff <= 1e-4, "{name} {pooling}: max |diff| {diff}");
        assert!(cos >= 0.99999, "{name} {pooling}: min cosine {cos}");
    }
}

#[test]
fn every_family_matches_pytorch() {
    for family in FAMILIES {
        check_parity(family.dir, &dir(family), &reference(family));
    }
    // CamemBERT is XLM-R's network under its own model_type (the fixture
    // script checks transformers' CamembertModel gives the same vectors).
    let xlmr = &FAMILIES[1];
    let tmp = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(dir(xlmr).join("config.json"))
        .unwrap()
        .replace("\"xlm-roberta\"", "\"camembert\"");
    let camembert = common::model_variant(
        &dir(xlmr),
        &tmp.path().join("camembert"),
        &[],
        &[("config.json", config.into_bytes())],
    );
    check_parity("camembert", &camembert, &reference(xlmr));
}

#[test]
fn mpnet_buckets_match_transformers() {
    let text = std::fs::read_to_string(common::fixture("families/mpnet/reference.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let expected: Vec<usize> =
        serde_json::from_value(value["mpnet_buckets_-600_600"].clone()).unwrap();
    let buckets = embedtune::layers::RelativeBuckets {
        num_buckets: 32,
        max_distance: 128,
    };
    let got: Vec<usize> = (-600..=600).map(|d| buckets.bucket(d)).collect();
    assert_eq!(got, expected);
}

/// Three fixture sentences of different lengths in one padded batch.
fn batch(e: &Embedder, fx: &Reference) -> Batch {
    let texts = [&fx.sentences[0], &fx.sentences[28], &fx.sentences[3]];
    let encoded = e.tokenizer().encode_all(&texts).unwrap();
    e.tokenizer()
        .pad(&encoded, vec![0, 1, 2], &Device::Cpu)
        .unwrap()
}

#[test]
fn cpu_pass_equals_the_graph_outputs_and_every_gradient() {
    for family in FAMILIES.iter().filter(|f| f.cpu_pass) {
        eprintln!("{}", family.dir);
        let e = embedder(&dir(family), Pooling::Mean, false, DType::F32, true);
        common::assert_cpu_pass_matches_graph(
            e.model(),
            &batch(&e, &reference(family)),
            DropoutSeed(21),
        );
    }
    // ModernBERT has no CPU pass: training takes the graph.
    let modern = embedder(&dir(&FAMILIES[4]), Pooling::Mean, false, DType::F32, true);
    let b = batch(&modern, &reference(&FAMILIES[4]));
    assert!(
        modern
            .model()
            .encoder
            .forward_train(&b, DropoutSeed(1))
            .unwrap()
            .is_none()
    );
}

#[test]
fn gradients_reach_every_weight_and_match_finite_differences() {
    for family in FAMILIES {
        eprintln!("{}", family.dir);
        let fx = reference(family);
        let f32_model = embedder(&dir(family), Pooling::Mean, false, DType::F32, true);
        common::assert_every_weight_gets_a_gradient(
            f32_model.model(),
            &batch(&f32_model, &fx),
            family.weights,
        );
        let f64_model = embedder(&dir(family), Pooling::Mean, false, DType::F64, true);
        common::assert_gradients_match_finite_differences(
            f64_model.model(),
            &batch(&f64_model, &fx),
            DropoutSeed(5),
            family.probes,
        );
    }
}

#[test]
fn train_mode_dropout_is_seeded_and_reproducible() {
    for family in FAMILIES {
        let e = embedder(&dir(family), Pooling::Mean, false, DType::F32, false);
        let b = batch(&e, &reference(family));
        let run = |seed: Option<u64>, graph: bool| -> Vec<f32> {
            let dropout = seed.map(DropoutSeed);
            let out = if graph {
                e.model().encoder.forward_graph(&b, dropout)
            } else {
                e.model().encoder.forward(&b, dropout)
            };
            let pooled = Pooling::Mean
                .pool(&out.unwrap(), &b.attention_mask)
                .unwrap();
            pooled.flatten_all().unwrap().to_vec1().unwrap()
        };
        let name = family.dir;
        assert_eq!(
            run(Some(1), false),
            run(Some(1), false),
            "{name}: same seed"
        );
        assert_ne!(
            run(Some(1), false),
            run(Some(2), false),
            "{name}: seeds differ"
        );
        assert_ne!(
            run(Some(1), false),
            run(None, false),
            "{name}: train mode drops"
        );
        assert_eq!(
            run(None, false),
            run(None, false),
            "{name}: eval is deterministic"
        );
        // The fast path and the graph draw the same masks.
        let (fast, graph) = (run(Some(3), false), run(Some(3), true));
        let worst = fast
            .iter()
            .zip(&graph)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "{name}: fast vs graph dropout differ by {worst}"
        );
    }
}

/// Renames every weight as a checkpoint with a head stores it: the family
/// prefix and, for LayerNorms, the legacy gamma/beta.
fn renamed(tensors: HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(name, t)| {
            let name = name
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (format!("{prefix}{name}"), t)
        })
        .collect()
}

#[test]
fn weight_name_variants_load() {
    let tmp = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let src = dir(family);
        let variant = common::model_variant(
            &src,
            &tmp.path().join(family.dir),
            &["model.safetensors"],
            &[],
        );
        let tensors =
            candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &renamed(tensors, family.prefix),
            variant.join("model.safetensors"),
        )
        .unwrap();
        let fx = reference(family);
        let embed = |m: &Path| {
            embedder(m, Pooling::Mean, true, DType::F32, false)
                .embed(&fx.sentences)
                .unwrap()
        };
        assert_eq!(embed(&variant), embed(&src), "{}", family.dir);
    }
}

#[test]
fn an_unsupported_family_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let t5 = common::model_variant(
        &dir(&FAMILIES[0]),
        &tmp.path().join("t5"),
        &[],
        &[(
            "config.json",
            br#"{"model_type": "t5", "d_model": 32}"#.to_vec(),
        )],
    );
    let data = tmp.path().join("in.txt");
    std::fs::write(&data, "A sentence.\n").unwrap();
    let out = embed(&t5, &data, &tmp.path().join("out.npy"), &[]);
    assert_clean_error(&out, "unsupported model_type `t5`");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for family in embedtune::models::SUPPORTED_MODEL_TYPES {
        assert!(stderr.contains(family), "{family} not listed: {stderr}");
    }
    assert!(!tmp.path().join("out.npy").exists());
}

/// Sentences made of the fixture texts' words, for `fit`.
fn corpus(fx: &Reference, n: usize) -> String {
    let words: Vec<&str> = fx
        .sentences
        .iter()
        .flat_map(|s| s.split_whitespace())
        .collect();
    (0..n)
        .map(|i| {
            let len = 4 + i % 7;
            (0..len)
                .map(|k| words[(i * 31 + k * 17) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ok(out: std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{what}: {stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn every_family_runs_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let (name, model) = (family.dir, dir(family));
        let m = model.to_str().unwrap();
        let work = tmp.path().join(name);
        std::fs::create_dir_all(&work).unwrap();
        let fx = reference(family);
        let texts = work.join("texts.txt");
        std::fs::write(&texts, fx.sentences.join("\n")).unwrap();
        let t = texts.to_str().unwrap();
        let sts = work.join("sts.jsonl");
        let pairs: Vec<String> = (0..fx.sentences.len() - 1)
            .map(|i| {
                serde_json::json!({"sentence1": fx.sentences[i], "sentence2": fx.sentences[i + 1], "score": (i % 5) as f64})
                    .to_string()
            })
            .collect();
        std::fs::write(&sts, pairs.join("\n")).unwrap();
        let data = work.join("corpus.txt");
        std::fs::write(&data, corpus(&fx, 120)).unwrap();
        let out = work.join("fit");
        let o = out.to_str().unwrap();

        let vectors = work.join("v.jsonl");
        ok(
            embedtune(&[
                "embed",
                "--model",
                m,
                "--data",
                t,
                "--out",
                vectors.to_str().unwrap(),
            ]),
            name,
        );
        assert_eq!(
            std::fs::read_to_string(&vectors).unwrap().lines().count(),
            fx.sentences.len()
        );
        let report = ok(
            embedtune(&["diagnose", "--model", m, "--data", t, "--format", "json"]),
            name,
        );
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert!(
            report["avg_cosine"].as_f64().unwrap().is_finite(),
            "{name}: {report}"
        );
        let eval = ok(
            embedtune(&[
                "eval",
                "--model",
                m,
                "--sts",
                sts.to_str().unwrap(),
                "--format",
                "json",
            ]),
            name,
        );
        let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
        assert_eq!(eval["n"], fx.sentences.len() - 1, "{name}");
        ok(
            embedtune(&[
                "fit",
                "--model",
                m,
                "--data",
                data.to_str().unwrap(),
                "--out",
                o,
                "--steps",
                "3",
                "--batch-size",
                "8",
                "--holdout",
                "16",
                "--max-len",
                "16",
                "--lr",
                "1e-3",
                "--eval-every",
                "2",
                "--save-every",
                "2",
            ]),
            name,
        );
        let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 3, "{name}: {log}");
        // The saved folder reloads, keeps the checkpoint's names and gives
        // new embeddings.
        let before =
            candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
        let after =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        let mut names: Vec<_> = before.keys().collect();
        names.sort();
        let mut saved: Vec<_> = after.keys().collect();
        saved.sort();
        assert_eq!(names, saved, "{name}");
        let tuned = embedder(&out, Pooling::Mean, true, DType::F32, false)
            .embed(&fx.sentences)
            .unwrap();
        let base = embedder(&model, Pooling::Mean, true, DType::F32, false)
            .embed(&fx.sentences)
            .unwrap();
        assert_ne!(tuned, base, "{name}: fit changed nothing");
    }
}

#[test]
fn roberta_checkpoints_without_token_types_load() {
    // The one token type's row folded into the position table: the same
    // function without a token-type table.
    let src = dir(&FAMILIES[0]);
    let tmp = tempfile::tempdir().unwrap();
    let variant = common::model_variant(
        &src,
        &tmp.path().join("no-types"),
        &["model.safetensors"],
        &[],
    );
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let types = tensors
        .remove("embeddings.token_type_embeddings.weight")
        .unwrap();
    let pos = &tensors["embeddings.position_embeddings.weight"];
    let folded = pos
        .to_dtype(DType::F32)
        .unwrap()
        .broadcast_add(&types.to_dtype(DType::F32).unwrap())
        .unwrap();
    tensors.insert("embeddings.position_embeddings.weight".into(), folded);
    candle_core::safetensors::save(&tensors, variant.join("model.safetensors")).unwrap();
    let fx = reference(&FAMILIES[0]);
    let embed = |m: &Path| {
        embedder(m, Pooling::Mean, true, DType::F32, false)
            .embed(&fx.sentences)
            .unwrap()
    };
    let (diff, _) = compare(&embed(&variant), &embed(&src));
    assert!(diff < 1e-5, "max |diff| {diff}");
}
