//! The fused kernels equal candle's differentiable compositions, forward and
//! backward, on random inputs; so do the backward passes CUDA runs.

use candle_core::{D, Device, Tensor, Var};
use embedtune::layers::fused;
use embedtune::rng::Rng;

fn random(shape: &[usize], seed: u64, scale: f64, shift: f64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.normal() * scale + shift) as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn layer_norm_forward_and_backward_match_the_composition() {
    for (shape, seed) in [(vec![37, 48], 1), (vec![3, 5, 64], 2)] {
        let h = *shape.last().unwrap();
        let x = Var::from_tensor(&random(&shape, seed, 2.0, 0.7)).unwrap();
        let g = Var::from_tensor(&random(&[h], seed + 10, 0.3, 1.0)).unwrap();
        let b = Var::from_tensor(&random(&[h], seed + 20, 0.3, 0.0)).unwrap();
        // Weight the output so every gradient path matters.
        let w = random(&shape, seed + 30, 1.0, 0.0);
        let fused_out = fused::layer_norm(&x, &g, &b, 1e-12).unwrap();
        let slow_out = candle_nn::ops::layer_norm_slow(&x, &g, &b, 1e-12).unwrap();
        assert!(max_diff(&fused_out, &slow_out) < 1e-5);
        let gf = fused_out
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = slow_out
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("x", &x), ("gamma", &g), ("beta", &b)] {
            let d = max_diff(
                gf.get(v.as_tensor()).unwrap(),
                gs.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "{name}: gradients differ by {d}");
        }
        // The backward CUDA runs (candle ops), here on the CPU.
        let (dx, dg, db) = fused::layer_norm_backward_composed(&x, &g, &w, 1e-12).unwrap();
        assert_eq!(dx.dims(), x.dims());
        for (name, v, d) in [("x", &x, dx), ("gamma", &g, dg), ("beta", &b, db)] {
            let d = max_diff(&d, gs.get(v.as_tensor()).unwrap());
            assert!(d < 1e-4, "{name}: composed gradient differs by {d}");
        }
    }
}

#[test]
fn softmax_forward_and_backward_match_the_composition() {
    let x = Var::from_tensor(&random(&[4, 3, 7, 19], 5, 3.0, 0.0)).unwrap();
    let w = random(&[4, 3, 7, 19], 6, 1.0, 0.0);
    let f = fused::softmax_last_dim(&x).unwrap();
    let s = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
    assert!(max_diff(&f, &s) < 1e-6);
    let gf = f.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = s.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(
        max_diff(
            gf.get(x.as_tensor()).unwrap(),
            gs.get(x.as_tensor()).unwrap()
        ) < 1e-5
    );
    // The backward CUDA runs (candle ops), here on the CPU.
    let composed = fused::softmax_backward_composed(&f, &w).unwrap();
    assert!(max_diff(&composed, gs.get(x.as_tensor()).unwrap()) < 1e-5);
}

#[test]
fn gelu_forward_and_backward_match_candle() {
    let x = Var::from_tensor(&random(&[6, 333], 8, 2.5, 0.0)).unwrap();
    let w = random(&[6, 333], 9, 1.0, 0.0);
    let f = fused::gelu_erf(&x).unwrap();
    let c = x.as_tensor().gelu_erf().unwrap();
    assert!(max_diff(&f, &c) < 1e-5);
    let gf = f.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = c.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(
        max_diff(
            gf.get(x.as_tensor()).unwrap(),
            gc.get(x.as_tensor()).unwrap()
        ) < 1e-5
    );
}

#[test]
fn other_dtypes_take_the_fallback() {
    // f64 goes through candle's ops and still has a backward pass.
    let x = Var::from_tensor(
        &random(&[5, 8], 7, 1.0, 0.0)
            .to_dtype(candle_core::DType::F64)
            .unwrap(),
    )
    .unwrap();
    let g = Tensor::ones(8, candle_core::DType::F64, &Device::Cpu).unwrap();
    let b = Tensor::zeros(8, candle_core::DType::F64, &Device::Cpu).unwrap();
    let y = fused::layer_norm(&x, &g, &b, 1e-5).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    let p = fused::softmax_last_dim(&x).unwrap();
    assert!((p.sum(1).unwrap().to_vec1::<f64>().unwrap()[0] - 1.0).abs() < 1e-12);
}
