//! The encoder can be trained: gradients reach every weight and agree with
//! finite differences; dropout is real and reproducible.

mod common;

use candle_core::{DType, Device, Tensor};
use common::max_token_diff;
use embedtune::layers::DropoutSeed;
use embedtune::layers::Weights;
use embedtune::models::{LoadedEncoder, ModelConfig, build_encoder, init_weights};
use embedtune::rng::Rng;
use embedtune::tokenize::{Batch, Encoded};

fn tiny_config() -> ModelConfig {
    ModelConfig::from_value(serde_json::json!({
        "model_type": "bert",
        "vocab_size": 50,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 16,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
    }))
    .unwrap()
}

fn tiny_model(dtype: DType, trainable: bool) -> LoadedEncoder {
    let cfg = tiny_config();
    let weights = Weights::from_tensors(
        init_weights(&cfg, 3, dtype, &Device::Cpu).unwrap(),
        &[],
        dtype,
        &Device::Cpu,
    )
    .unwrap();
    build_encoder(&cfg, weights, trainable).unwrap()
}

/// Three sequences of different lengths (so padding is exercised).
fn batch() -> Batch {
    let rows: Vec<Vec<u32>> = vec![
        vec![2, 7, 9, 11, 3],
        vec![2, 5, 3],
        vec![2, 8, 8, 40, 13, 21, 3],
    ];
    let encoded: Vec<Encoded> = rows
        .into_iter()
        .map(|ids| Encoded {
            type_ids: vec![0; ids.len()],
            ids,
        })
        .collect();
    pad(&encoded)
}

fn pad(encoded: &[Encoded]) -> Batch {
    let t = encoded.iter().map(|e| e.ids.len()).max().unwrap();
    let b = encoded.len();
    let mut ids = vec![0u32; b * t];
    let mut mask = vec![0u32; b * t];
    for (r, e) in encoded.iter().enumerate() {
        ids[r * t..r * t + e.ids.len()].copy_from_slice(&e.ids);
        mask[r * t..r * t + e.ids.len()].fill(1);
    }
    Batch {
        input_ids: Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(),
        token_type_ids: Tensor::zeros((b, t), DType::U32, &Device::Cpu).unwrap(),
        attention_mask: Tensor::from_vec(mask, (b, t), &Device::Cpu).unwrap(),
        indices: (0..b).collect(),
    }
}

#[test]
fn every_weight_gets_a_finite_nonzero_gradient() {
    let model = tiny_model(DType::F32, true);
    // 5 embedding tensors + 16 per layer.
    common::assert_every_weight_gets_a_gradient(&model, &batch(), 5 + 16 * 2);
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let model = tiny_model(DType::F64, true);
    let batch = batch();
    let seed = 5;
    let probes = [
        ("embeddings.word_embeddings.weight", 7 * 32 + 3),
        ("embeddings.position_embeddings.weight", 2 * 32 + 1),
        ("embeddings.LayerNorm.weight", 4),
        ("encoder.layer.0.attention.self.query.weight", 37),
        ("encoder.layer.0.attention.self.key.bias", 5),
        ("encoder.layer.1.attention.self.value.weight", 100),
        ("encoder.layer.1.intermediate.dense.weight", 411),
        ("encoder.layer.1.output.dense.bias", 9),
        ("encoder.layer.1.output.LayerNorm.bias", 17),
    ];
    common::assert_gradients_match_finite_differences(&model, &batch, DropoutSeed(seed), &probes);
}

fn last_hidden(model: &LoadedEncoder, batch: &Batch, dropout: Option<DropoutSeed>) -> Vec<f32> {
    let out = model.encoder.forward(batch, dropout).unwrap();
    out.last().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn dropout_differs_in_train_mode_and_is_seeded() {
    let model = tiny_model(DType::F32, false);
    let batch = batch();
    let mut rng = Rng::new(1);
    let a = last_hidden(&model, &batch, Some(DropoutSeed::draw(&mut rng)));
    let b = last_hidden(&model, &batch, Some(DropoutSeed::draw(&mut rng)));
    assert_ne!(a, b, "two train-mode passes must differ");
    let a2 = last_hidden(&model, &batch, Some(DropoutSeed::draw(&mut Rng::new(1))));
    assert_eq!(a, a2, "same seed must give the same masks");
    assert_ne!(a, last_hidden(&model, &batch, Some(DropoutSeed(2))));
    let eval = last_hidden(&model, &batch, None);
    assert_ne!(a, eval, "train mode must drop something");
}

#[test]
fn eval_mode_is_deterministic_and_dropout_free() {
    let model = tiny_model(DType::F32, false);
    let batch = batch();
    let a = last_hidden(&model, &batch, None);
    let b = last_hidden(&model, &batch, None);
    assert_eq!(a, b, "eval passes must be bit-identical");
    // Agreement with the candle graph: cpu_inference_path_matches_the_candle_graph.
}

#[test]
fn cpu_training_pass_matches_the_candle_graph() {
    let model = tiny_model(DType::F32, true);
    let mut batch = batch();
    // A second segment in one row, so token-type gradients are exercised.
    let mut types = vec![0u32; 3 * 7];
    types[2 * 7 + 4..2 * 7 + 7].fill(1);
    batch.token_type_ids = Tensor::from_vec(types, (3, 7), &Device::Cpu).unwrap();

    common::assert_cpu_pass_matches_graph(&model, &batch, DropoutSeed(21));
}

#[test]
fn cpu_inference_path_matches_the_candle_graph() {
    // forward() takes the plain-CPU path for f32 on the CPU, trainable or not.
    let fast = tiny_model(DType::F32, true);
    let graph = tiny_model(DType::F32, true);
    let batch = batch();
    for train in [false, true] {
        let dropout = train.then_some(DropoutSeed(4));
        let a = fast.encoder.forward(&batch, dropout).unwrap();
        let b = graph.encoder.forward_graph(&batch, dropout).unwrap();
        assert_eq!(a.hidden_states.len(), b.hidden_states.len());
        for (x, y) in a.hidden_states.iter().zip(&b.hidden_states) {
            assert!(!x.track_op(), "inference output is not a graph");
            assert!(
                max_token_diff(x, y, &batch) < 1e-5,
                "train={train}: outputs differ"
            );
        }
    }
}

#[test]
fn train_mode_masks_do_not_depend_on_batching() {
    // Rows keep their ids when a batch is split (as gradient caching does),
    // and each part pads only to its own longest row: the outputs must be
    // those of the whole batch, on both the CPU pass and the candle graph.
    let model = tiny_model(DType::F32, false);
    let whole = batch();
    let seed = Some(DropoutSeed(9));
    for graph in [false, true] {
        let run = |b: &Batch| {
            let out = if graph {
                model.encoder.forward_graph(b, seed)
            } else {
                model.encoder.forward(b, seed)
            };
            out.unwrap().last().clone()
        };
        let all = run(&whole);
        for (start, len) in [(0, 2), (2, 1)] {
            let mut part = whole.rows(start, len).unwrap();
            let t = (0..len)
                .map(|r| {
                    part.attention_mask
                        .get(r)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<u32>()
                        .unwrap() as usize
                })
                .max()
                .unwrap();
            part.input_ids = part.input_ids.narrow(1, 0, t).unwrap();
            part.token_type_ids = part.token_type_ids.narrow(1, 0, t).unwrap();
            part.attention_mask = part.attention_mask.narrow(1, 0, t).unwrap();
            let expected = all.narrow(0, start, len).unwrap().narrow(1, 0, t).unwrap();
            let got = run(&part);
            let d = max_token_diff(&expected, &got, &part);
            assert!(d < 1e-5, "graph={graph} rows {start}..: differ by {d}");
        }
    }
}
