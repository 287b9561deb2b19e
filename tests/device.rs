//! The device-sensitive tests, written once and run on every device asked
//! for: always the CPU, plus the device `EMBEDTUNE_TEST_DEVICE` names
//! (`cuda`, `cuda:N`, `metal`; the build must have its feature). Unset, the
//! other devices are skipped with a notice (CI stays on the CPU).
//!
//! The reference for every device is the CPU: the hand-written training
//! pass for the encoder, candle's differentiable compositions for the fused
//! ops, and f64 arithmetic for AdamW and the losses.

mod common;

use std::collections::HashMap;

use candle_core::{D, DType, Device, Tensor, Var};
use common::{loss_of, max_abs_diff, max_token_diff};
use embedtune::DeviceSpec;
use embedtune::layers::{DropoutSeed, Weights, fused};
use embedtune::losses::{self, LossConfig};
use embedtune::models::{LoadedEncoder, ModelConfig, build_encoder, init_weights};
use embedtune::rng::Rng;
use embedtune::tokenize::Batch;
use embedtune::training::optim::{AdamW, AdamWParams};

/// The CPU, then the device of `EMBEDTUNE_TEST_DEVICE` if set.
fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match std::env::var("EMBEDTUNE_TEST_DEVICE") {
        Ok(name) if name != "cpu" => {
            let spec: DeviceSpec = name
                .parse()
                .unwrap_or_else(|e| panic!("EMBEDTUNE_TEST_DEVICE={name}: {e}"));
            let device = spec
                .open()
                .unwrap_or_else(|e| panic!("EMBEDTUNE_TEST_DEVICE={name}: {e}"));
            out.push(device);
        }
        Ok(_) => {}
        Err(_) => eprintln!(
            "device tests: CPU only (set EMBEDTUNE_TEST_DEVICE=cuda to run them on a GPU too)"
        ),
    }
    out
}

fn tiny_config(dropout: f64) -> ModelConfig {
    ModelConfig::from_value(serde_json::json!({
        "model_type": "bert", "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 16,
        "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
    }))
    .unwrap()
}

/// The same random weights on `device`.
fn tiny_model(device: &Device, dropout: f64) -> LoadedEncoder {
    let cfg = tiny_config(dropout);
    let tensors = init_weights(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let weights = Weights::from_tensors(tensors, &[], DType::F32, device).unwrap();
    build_encoder(&cfg, weights, true).unwrap()
}

/// Three rows of different lengths, the last with a second segment.
fn batch(device: &Device) -> Batch {
    let rows: [&[u32]; 3] = [&[2, 7, 9, 11, 3], &[2, 5, 3], &[2, 8, 8, 40, 13, 21, 3]];
    let (b, t) = (rows.len(), 7);
    let (mut ids, mut mask, mut types) = (vec![0u32; b * t], vec![0u32; b * t], vec![0u32; b * t]);
    for (r, row) in rows.iter().enumerate() {
        ids[r * t..r * t + row.len()].copy_from_slice(row);
        mask[r * t..r * t + row.len()].fill(1);
    }
    types[2 * t + 4..3 * t].fill(1);
    let tensor = |v: Vec<u32>| Tensor::from_vec(v, (b, t), device).unwrap();
    Batch {
        input_ids: tensor(ids),
        token_type_ids: tensor(types),
        attention_mask: tensor(mask),
        indices: (0..b).collect(),
    }
}

fn to_cpu(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu).unwrap()
}

fn random(shape: &[usize], seed: u64, device: &Device) -> Tensor {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, shape, device).unwrap()
}

#[test]
fn encoder_forward_matches_the_cpu_pass() {
    let reference = tiny_model(&Device::Cpu, 0.1);
    let cpu_batch = batch(&Device::Cpu);
    for device in devices() {
        let model = tiny_model(&device, 0.1);
        for dropout in [None, Some(DropoutSeed(5))] {
            let want = reference.encoder.forward(&cpu_batch, dropout).unwrap();
            let got = model
                .encoder
                .forward_graph(&batch(&device), dropout)
                .unwrap();
            for (a, b) in want.hidden_states.iter().zip(&got.hidden_states) {
                let diff = max_token_diff(a, &to_cpu(b), &cpu_batch);
                assert!(diff < 1e-4, "{device:?} dropout {dropout:?}: {diff}");
            }
        }
    }
}

#[test]
fn every_gradient_matches_the_cpu_pass() {
    // Dropout off: a device may draw its own masks (reproducible for a
    // seed on that device, not equal to the CPU's).
    let reference = tiny_model(&Device::Cpu, 0.0);
    let cpu_batch = batch(&Device::Cpu);
    let pass = reference
        .encoder
        .forward_train(&cpu_batch, DropoutSeed(1))
        .unwrap()
        .expect("f32 on the CPU has a hand-written pass");
    let mut want = loss_of(pass.output(), &cpu_batch).backward().unwrap();
    pass.backward(&mut want).unwrap();
    let want: HashMap<String, Tensor> = common::vars(&reference)
        .into_iter()
        .map(|(name, var)| (name, want.get(var.as_tensor()).unwrap().clone()))
        .collect();
    for device in devices() {
        let model = tiny_model(&device, 0.0);
        let b = batch(&device);
        let out = model
            .encoder
            .forward_graph(&b, Some(DropoutSeed(1)))
            .unwrap();
        let grads = loss_of(&out, &b).backward().unwrap();
        for (name, var) in common::vars(&model) {
            let g = to_cpu(grads.get(var.as_tensor()).unwrap());
            let scale = max_abs_diff(&want[&name], &want[&name].zeros_like().unwrap());
            let diff = max_abs_diff(&g, &want[&name]);
            assert!(
                diff <= 1e-4 * scale.max(1e-3),
                "{device:?} {name}: {diff:e} (largest gradient {scale:e})"
            );
        }
    }
}

#[test]
fn train_mode_dropout_is_seeded_on_every_device() {
    for device in devices() {
        let model = tiny_model(&device, 0.1);
        let b = batch(&device);
        let run = |seed| {
            to_cpu(
                model
                    .encoder
                    .forward_graph(&b, Some(DropoutSeed(seed)))
                    .unwrap()
                    .last(),
            )
        };
        let (a, again, other) = (run(3), run(3), run(4));
        let cpu_batch = batch(&Device::Cpu);
        assert_eq!(max_token_diff(&a, &again, &cpu_batch), 0.0, "{device:?}");
        assert!(max_token_diff(&a, &other, &cpu_batch) > 1e-3, "{device:?}");
    }
}

/// `f` applied by a fused op and by candle's composition: outputs and the
/// gradients of every input agree.
fn check_fused(
    device: &Device,
    inputs: &[Tensor],
    fused_op: impl Fn(&[Tensor]) -> Tensor,
    composition: impl Fn(&[Tensor]) -> Tensor,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (fused_op(&ts), composition(&ts));
    assert!(
        max_abs_diff(&to_cpu(&a), &to_cpu(&b)) < 1e-5,
        "{device:?} forward"
    );
    let w = random(a.dims(), 9, device);
    let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
    for (k, v) in vars.iter().enumerate() {
        let (x, y) = (
            to_cpu(ga.get(v.as_tensor()).unwrap()),
            to_cpu(gb.get(v.as_tensor()).unwrap()),
        );
        assert!(
            max_abs_diff(&x, &y) < 1e-4,
            "{device:?} gradient of input {k}"
        );
    }
}

#[test]
fn fused_ops_match_the_compositions_forward_and_backward() {
    for device in devices() {
        let x = random(&[6, 5, 48], 1, &device);
        let gamma = random(&[48], 2, &device).affine(0.3, 1.0).unwrap();
        let beta = random(&[48], 3, &device);
        check_fused(
            &device,
            &[x.clone(), gamma, beta],
            |t| fused::layer_norm(&t[0], &t[1], &t[2], 1e-12).unwrap(),
            |t| candle_nn::ops::layer_norm_slow(&t[0], &t[1], &t[2], 1e-12).unwrap(),
        );
        check_fused(
            &device,
            &[(x.clone() * 3.0).unwrap()],
            |t| fused::softmax_last_dim(&t[0]).unwrap(),
            |t| candle_nn::ops::softmax(&t[0], D::Minus1).unwrap(),
        );
        check_fused(
            &device,
            std::slice::from_ref(&x),
            |t| fused::gelu_erf(&t[0]).unwrap(),
            |t| {
                // x · Φ(x) = x · (1 + erf(x/√2)) / 2, from candle's erf.
                let phi = ((t[0].clone() / std::f64::consts::SQRT_2)
                    .unwrap()
                    .erf()
                    .unwrap()
                    + 1.0)
                    .unwrap();
                (t[0].clone() * (phi * 0.5).unwrap()).unwrap()
            },
        );
    }
}

#[test]
fn one_adamw_step_matches_the_formula() {
    let p = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let (lr, scale) = (0.1, 0.5);
    let theta0 = random(&[4, 3], 11, &Device::Cpu);
    let grad0 = random(&[4, 3], 12, &Device::Cpu);
    // First step from zero moments: m̂ = g', v̂ = g'², g' = scale·g.
    let want: Vec<f64> = {
        let th: Vec<f32> = theta0.flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f32> = grad0.flatten_all().unwrap().to_vec1().unwrap();
        th.iter()
            .zip(&g)
            .map(|(&t, &g)| {
                let g = g as f64 * scale;
                t as f64 * (1.0 - lr * p.weight_decay) - lr * g / (g.abs() + p.eps)
            })
            .collect()
    };
    for device in devices() {
        let var = Var::from_tensor(&theta0.to_device(&device).unwrap()).unwrap();
        let vars = HashMap::from([("w".to_string(), var.clone())]);
        let mut opt = AdamW::new(&vars, p).unwrap();
        let loss = (var.as_tensor() * grad0.to_device(&device).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let norm = opt.grad_norm(&grads).unwrap();
        let g_norm: f64 = grad0
            .to_dtype(DType::F64)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .sqrt();
        assert!((norm - g_norm).abs() < 1e-5 * g_norm, "{device:?} norm");
        opt.step(&grads, lr, scale).unwrap();
        let expect_want = |var: &Var, what: &str| {
            let got: Vec<f32> = to_cpu(var.as_tensor())
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 1e-5,
                    "{device:?} {what}[{k}]: {a} vs {b}"
                );
            }
        };
        expect_want(&var, "f32");

        // Mixed precision: the loss sees a bf16 copy; its gradient updates
        // the f32 master the same way (a first step is lr·sign(g), blind to
        // the gradient's rounding), and the copy is the updated master
        // rounded to bf16.
        let master = Var::from_tensor(&theta0.to_device(&device).unwrap()).unwrap();
        let copy = Var::from_tensor(&master.to_dtype(DType::BF16).unwrap()).unwrap();
        let vars = HashMap::from([("w".to_string(), master.clone())]);
        let copies = HashMap::from([("w".to_string(), copy.clone())]);
        let mut opt = AdamW::new(&vars, p).unwrap().with_compute_copies(&copies);
        let g = grad0
            .to_device(&device)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let grads = (copy.as_tensor() * g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads, lr, scale).unwrap();
        expect_want(&master, "bf16 copy");
        let f32 = |t: &Tensor| to_cpu(&t.to_dtype(DType::F32).unwrap());
        let rounded = f32(&master.to_dtype(DType::BF16).unwrap());
        assert_eq!(
            max_abs_diff(&f32(copy.as_tensor()), &rounded),
            0.0,
            "{device:?}: the copy follows the master"
        );
    }
}

#[test]
fn losses_and_their_gradients_agree_across_devices() {
    let x = random(&[8, 16], 21, &Device::Cpu);
    let y = (&x + (random(&[8, 16], 22, &Device::Cpu) * 0.3).unwrap()).unwrap();
    let guide = random(&[8, 16], 23, &Device::Cpu);
    let cfg = LossConfig {
        w_guide: 1.0,
        ..LossConfig::combined()
    };
    let run = |device: &Device| {
        let xv = Var::from_tensor(&x.to_device(device).unwrap()).unwrap();
        let yv = Var::from_tensor(&y.to_device(device).unwrap()).unwrap();
        let (xn, yn) = (
            embedtune::pooling::l2_normalize(xv.as_tensor()).unwrap(),
            embedtune::pooling::l2_normalize(yv.as_tensor()).unwrap(),
        );
        let g = guide.to_device(device).unwrap();
        let parts = losses::combined(&xn, &yn, Some(&g), &cfg).unwrap();
        let grads = parts.total.backward().unwrap();
        let value = parts.total.to_scalar::<f32>().unwrap();
        (value, to_cpu(grads.get(xv.as_tensor()).unwrap()))
    };
    let (want, want_grad) = run(&Device::Cpu);
    for device in devices() {
        let (got, grad) = run(&device);
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{device:?}"
        );
        assert!(
            max_abs_diff(&grad, &want_grad) < 1e-5,
            "{device:?} gradient"
        );
    }
}
