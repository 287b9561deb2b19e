//! Losses against hand-computed values, the reference formulas written out
//! independently, and finite differences.

use candle_core::{DType, Device, Tensor, Var};
use embedtune::losses::{LossConfig, align, combined, info_nce, rank_distill, uniform};
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
fn rank_distillation_is_the_kl_of_the_off_diagonal_rows() {
    let (n, tau) = (5, 0.2);
    let x: Vec<Vec<f64>> = random(n, 3, 11).iter().map(|r| unit(r)).collect();
    let y: Vec<Vec<f64>> = random(n, 3, 12).iter().map(|r| unit(r)).collect();
    let g: Vec<Vec<f64>> = random(n, 3, 13).iter().map(|r| unit(r)).collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    // Row i: softmax over j ≠ i of cos/τ, KL(guide ‖ student), mean over i.
    let softmax_without = |i: usize, sim: &dyn Fn(usize) -> f64| -> Vec<(usize, f64)> {
        let z: f64 = (0..n)
            .filter(|&j| j != i)
            .map(|j| (sim(j) / tau).exp())
            .sum();
        (0..n)
            .filter(|&j| j != i)
            .map(|j| (j, (sim(j) / tau).exp() / z))
            .collect()
    };
    let mut reference = 0.0;
    for i in 0..n {
        let p = softmax_without(i, &|j| dot(&g[i], &g[j]));
        let q = softmax_without(i, &|j| dot(&x[i], &y[j]));
        reference += p
            .iter()
            .zip(&q)
            .map(|((_, pj), (_, qj))| pj * (pj / qj).ln())
            .sum::<f64>();
    }
    reference /= n as f64;
    let got = scalar(rank_distill(&tensor(&x), &tensor(&y), &tensor(&g), tau).unwrap());
    assert!((got - reference).abs() < 1e-9, "{got} vs {reference}");
    // A student with the guide's similarities has nothing to learn.
    let same = scalar(rank_distill(&tensor(&g), &tensor(&g), &tensor(&g), tau).unwrap());
    assert!(same.abs() < 1e-12, "{same}");
}

#[test]
fn combined_weights_the_parts() {
    let x = tensor(&random(6, 4, 3));
    let y = tensor(&random(6, 4, 4));
    let g = tensor(&random(6, 4, 5));
    let cfg = LossConfig {
        w_align: 0.5,
        w_uniform: 2.0,
        w_info_nce: 0.25,
        w_guide: 1.5,
        ..LossConfig::combined()
    };
    let parts = combined(&x, &y, Some(&g), &cfg).unwrap();
    let u = (scalar(uniform(&x, 2.0).unwrap()) + scalar(uniform(&y, 2.0).unwrap())) / 2.0;
    let expected = 0.5 * scalar(align(&x, &y, 2.0).unwrap())
        + 2.0 * u
        + 0.25 * scalar(info_nce(&x, &y, 0.05).unwrap())
        + 1.5 * scalar(rank_distill(&x, &y, &g, 0.05).unwrap());
    assert!((scalar(parts.total) - expected).abs() < 1e-9);
    assert!((scalar(parts.uniform) - u).abs() < 1e-12);
    // A guide weight without guide vectors is an error, not a silent 0.
    assert!(combined(&x, &y, None, &cfg).is_err());
}

#[test]
fn a_centred_loss_is_the_loss_of_the_centred_views() {
    let (x, y, g) = (
        random(6, 4, 21),
        random(6, 4, 22),
        tensor(&random(6, 4, 23)),
    );
    let centred = |rows: &Vec<Vec<f64>>| -> Tensor {
        let mean: Vec<f64> = (0..4)
            .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / rows.len() as f64)
            .collect();
        let c: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| r.iter().zip(&mean).map(|(v, m)| v - m).collect())
            .collect();
        tensor(&c)
    };
    let cfg = LossConfig {
        w_guide: 0.5,
        ..LossConfig::combined()
    };
    let plain = combined(&centred(&x), &centred(&y), Some(&g), &cfg).unwrap();
    let cfg = LossConfig {
        center: true,
        ..cfg
    };
    let got = combined(&tensor(&x), &tensor(&y), Some(&g), &cfg).unwrap();
    assert!((scalar(got.total) - scalar(plain.total)).abs() < 1e-12);
    // Shifting every vector by the same offset changes nothing.
    let shifted: Vec<Vec<f64>> = x
        .iter()
        .map(|r| r.iter().map(|v| v + 3.0).collect())
        .collect();
    let moved = combined(&tensor(&shifted), &tensor(&y), Some(&g), &cfg).unwrap();
    assert!((scalar(moved.align) - scalar(plain.align)).abs() < 1e-9);
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
        w_guide: 0.7,
        center: false,
    };
    let g_rows = tensor(&random(5, 4, 7));
    let var = Var::from_tensor(&tensor(&x0)).unwrap();
    let grads = combined(var.as_tensor(), &y, Some(&g_rows), &cfg)
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
            let f = |x: &Vec<Vec<f64>>| {
                scalar(combined(&tensor(x), &y, Some(&g_rows), &cfg).unwrap().total)
            };
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
