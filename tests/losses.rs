//! Losses against hand-computed values, the reference formulas written out
//! independently, and finite differences.

use candle_core::{DType, Device, Tensor, Var};
use embedtune::losses::{LossConfig, align, combined, info_nce, uniform};
use embedtune::rng::Rng;

fn t(rows: &[&[f64]]) -> Tensor {
    let d = rows[0].len();
    let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu).unwrap()
}

fn scalar(x: Tensor) -> f64 {
    x.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn random(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| (0..d).map(|_| rng.normal()).collect())
        .collect()
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn tensor(rows: &[Vec<f64>]) -> Tensor {
    let refs: Vec<&[f64]> = rows.iter().map(|r| r.as_slice()).collect();
    t(&refs)
}

#[test]
fn hand_computed_values() {
    let e1 = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
    // Identical views: alignment 0.
    assert!(scalar(align(&e1, &e1, 2.0).unwrap()).abs() < 1e-12);
    // Orthogonal unit vectors: ‖x−y‖² = 2, so uniform = log exp(−2·2) = −4.
    assert!((scalar(uniform(&e1, 2.0).unwrap()) + 4.0).abs() < 1e-9);
    // Unnormalised input is normalised first.
    let scaled = t(&[&[3.0, 0.0], &[0.0, 0.5]]);
    assert!((scalar(uniform(&scaled, 2.0).unwrap()) + 4.0).abs() < 1e-9);
    // Opposite views: ‖x−y‖ = 2, α = 1 → 2.
    let neg = t(&[&[-1.0, 0.0], &[0.0, -1.0]]);
    assert!((scalar(align(&e1, &neg, 1.0).unwrap()) - 2.0).abs() < 1e-6);
    // InfoNCE with orthogonal pairs: −1/τ + log(e^{1/τ} + 1).
    let tau: f64 = 0.05;
    let expected = -1.0 / tau + ((1.0 / tau).exp() + 1.0).ln();
    assert!((scalar(info_nce(&e1, &e1, tau).unwrap()) - expected).abs() < 1e-9);
    // A collapsed set: every distance 0, uniform = log 1 = 0.
    let same = t(&[&[1.0, 1.0], &[2.0, 2.0], &[0.5, 0.5]]);
    assert!(scalar(uniform(&same, 2.0).unwrap()).abs() < 1e-9);
}

#[test]
fn uniform_stays_finite_for_well_separated_points() {
    let e = t(&[&[1.0, 0.0], &[-1.0, 0.0]]);
    // exp(−400·4) underflows in f64; the log-sum-exp does not.
    let u = scalar(uniform(&e, 400.0).unwrap());
    assert!((u + 1600.0).abs() < 1e-6, "{u}");
}

#[test]
fn match_reference_formulas_on_random_data() {
    let (n, d) = (9, 5);
    let x: Vec<Vec<f64>> = random(n, d, 1).iter().map(|r| unit(r)).collect();
    let y: Vec<Vec<f64>> = random(n, d, 2).iter().map(|r| unit(r)).collect();
    for alpha in [1.0, 2.0, 3.0] {
        // (x - y).norm(dim=1).pow(α).mean()
        let reference = x
            .iter()
            .zip(&y)
            .map(|(a, b)| {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| (p - q).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .powf(alpha)
            })
            .sum::<f64>()
            / n as f64;
        let got = scalar(align(&tensor(&x), &tensor(&y), alpha).unwrap());
        assert!(
            (got - reference).abs() < 1e-6,
            "α={alpha}: {got} vs {reference}"
        );
    }
    for tt in [0.5, 2.0, 5.0] {
        // pdist(x).pow(2).mul(-t).exp().mean().log()
        let mut terms = Vec::new();
        for i in 0..n {
            for j in i + 1..n {
                let d2: f64 = x[i].iter().zip(&x[j]).map(|(p, q)| (p - q).powi(2)).sum();
                terms.push((-tt * d2).exp());
            }
        }
        let reference = (terms.iter().sum::<f64>() / terms.len() as f64).ln();
        let got = scalar(uniform(&tensor(&x), tt).unwrap());
        assert!(
            (got - reference).abs() < 1e-9,
            "t={tt}: {got} vs {reference}"
        );
    }
    // InfoNCE: mean_i −log softmax_j(cos(xᵢ, yⱼ)/τ)_i
    let tau = 0.1;
    let mut reference = 0.0;
    for i in 0..n {
        let logits: Vec<f64> = (0..n)
            .map(|j| x[i].iter().zip(&y[j]).map(|(p, q)| p * q).sum::<f64>() / tau)
            .collect();
        let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
        reference += lse - logits[i];
    }
    reference /= n as f64;
    let got = scalar(info_nce(&tensor(&x), &tensor(&y), tau).unwrap());
    assert!((got - reference).abs() < 1e-9, "{got} vs {reference}");
}

#[test]
fn combined_weights_the_parts() {
    let x = tensor(&random(6, 4, 3));
    let y = tensor(&random(6, 4, 4));
    let cfg = LossConfig {
        w_align: 0.5,
        w_uniform: 2.0,
        w_info_nce: 0.25,
        ..LossConfig::combined()
    };
    let parts = combined(&x, &y, &cfg).unwrap();
    let u = (scalar(uniform(&x, 2.0).unwrap()) + scalar(uniform(&y, 2.0).unwrap())) / 2.0;
    let expected = 0.5 * scalar(align(&x, &y, 2.0).unwrap())
        + 2.0 * u
        + 0.25 * scalar(info_nce(&x, &y, 0.05).unwrap());
    assert!((scalar(parts.total) - expected).abs() < 1e-9);
    assert!((scalar(parts.uniform) - u).abs() < 1e-12);
}

#[test]
fn gradients_match_finite_differences() {
    let x0 = random(5, 4, 5);
    let y = tensor(&random(5, 4, 6));
    let cfg = LossConfig {
        w_align: 1.0,
        w_uniform: 1.0,
        w_info_nce: 0.5,
        alpha: 2.0,
        t: 2.0,
        tau: 0.2,
    };
    let var = Var::from_tensor(&tensor(&x0)).unwrap();
    let grads = combined(var.as_tensor(), &y, &cfg)
        .unwrap()
        .total
        .backward()
        .unwrap();
    let g: Vec<Vec<f64>> = grads.get(var.as_tensor()).unwrap().to_vec2().unwrap();
    let eps = 1e-6;
    for i in 0..5 {
        for j in 0..4 {
            let mut up = x0.clone();
            up[i][j] += eps;
            let mut down = x0.clone();
            down[i][j] -= eps;
            let f = |x: &Vec<Vec<f64>>| scalar(combined(&tensor(x), &y, &cfg).unwrap().total);
            let numeric = (f(&up) - f(&down)) / (2.0 * eps);
            let rel = (numeric - g[i][j]).abs() / numeric.abs().max(g[i][j].abs()).max(1e-6);
            assert!(
                rel < 1e-4,
                "[{i}][{j}] analytic {} numeric {numeric}",
                g[i][j]
            );
        }
    }
}

#[test]
fn too_few_or_mismatched_inputs_are_errors() {
    let one = t(&[&[1.0, 0.0]]);
    assert!(uniform(&one, 2.0).is_err());
    let two = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
    assert!(align(&one, &two, 2.0).is_err());
}
