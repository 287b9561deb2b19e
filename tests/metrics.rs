//! Anisotropy metrics on constructed data with known answers.

use embedtune::Embeddings;
use embedtune::metrics::{
    EXACT_PAIRS_LIMIT, SAMPLED_PAIRS, Spectrum, alignment, avg_cosine, effective_rank, isoscore,
    mean_vector_norm, pair_stats, top1_variance_ratio,
};
use embedtune::rng::Rng;

fn gaussian(n: usize, d: usize, seed: u64) -> Embeddings {
    let mut rng = Rng::new(seed);
    Embeddings {
        dim: d,
        data: (0..n * d).map(|_| rng.normal() as f32).collect(),
    }
}

/// A common direction plus small noise: a narrow cone.
fn cone(n: usize, d: usize, noise: f64, seed: u64) -> Embeddings {
    let mut rng = Rng::new(seed);
    let common: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let data = (0..n)
        .flat_map(|_| {
            common
                .iter()
                .map(|c| (c + noise * rng.normal()) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    Embeddings { dim: d, data }
}

#[test]
fn points_spread_uniformly_on_the_sphere() {
    let d = 64;
    let e = gaussian(3000, d, 1);
    let avg = avg_cosine(&e).unwrap();
    assert!(avg.abs() < 0.005, "avg cosine {avg}");
    let stats = pair_stats(&e, 2.0, 50, 0).unwrap();
    assert!(stats.exact);
    assert_eq!(stats.pairs, 3000 * 2999 / 2);
    // On S^{d−1}, ‖x−y‖² = 2 − 2c with c of variance 1/d, so
    // log E exp(−2‖x−y‖²) ≈ −4 + 8/d: the lower bound −4 as d grows.
    let expected = -4.0 + 8.0 / d as f64;
    assert!(
        (stats.uniformity - expected).abs() < 0.03,
        "uniformity {}",
        stats.uniformity
    );
    assert!(mean_vector_norm(&e) < 0.05);
    let s = Spectrum::of(&embedtune::metrics::normalized(&e), true).unwrap();
    assert!(top1_variance_ratio(&s) < 2.5 / d as f64);
    assert!(effective_rank(&s) > 0.95 * d as f64);
    assert!(isoscore(&Spectrum::of(&e, true).unwrap()) > 0.9);
}

#[test]
fn a_narrow_cone_is_detected() {
    let e = cone(1000, 64, 0.1, 2);
    let avg = avg_cosine(&e).unwrap();
    assert!(avg > 0.9, "avg cosine {avg}");
    assert!(mean_vector_norm(&e) > 0.95);
    let stats = pair_stats(&e, 2.0, 50, 0).unwrap();
    assert!(stats.uniformity > -0.2, "uniformity {}", stats.uniformity);
    // Almost every cosine lands in the top bins.
    let top: u64 = stats.histogram.counts[45..].iter().sum();
    assert!(top as f64 > 0.99 * stats.pairs as f64);
}

#[test]
fn a_collapsed_set_has_uniformity_zero() {
    let e = Embeddings {
        dim: 3,
        data: [0.3f32, -1.0, 2.0].repeat(50),
    };
    assert!(pair_stats(&e, 2.0, 10, 0).unwrap().uniformity.abs() < 1e-5);
    assert!((avg_cosine(&e).unwrap() - 1.0).abs() < 1e-6);
    assert!((mean_vector_norm(&e) - 1.0).abs() < 1e-6);
    assert!((alignment(&e, &e).unwrap()).abs() < 1e-12);
    let s = Spectrum::of(&e, true).unwrap();
    assert!(isoscore(&s) < 1e-9);
}

#[test]
fn spectrum_figures_on_known_axes() {
    // k orthogonal axes with equal variance: effective rank k, top-1 share 1/k.
    let (d, k) = (10, 4);
    let mut rng = Rng::new(3);
    let data: Vec<f32> = (0..4000)
        .flat_map(|_| {
            (0..d)
                .map(|j| if j < k { rng.normal() as f32 } else { 0.0 })
                .collect::<Vec<_>>()
        })
        .collect();
    let s = Spectrum::of(&Embeddings { dim: d, data }, true).unwrap();
    assert!(
        (effective_rank(&s) - k as f64).abs() < 0.1,
        "{}",
        effective_rank(&s)
    );
    assert!((top1_variance_ratio(&s) - 1.0 / k as f64).abs() < 0.03);
    // IsoScore: k of d dimensions used → (k − 1)/(d − 1) by its definition.
    let iso = isoscore(&s);
    let expected = (k as f64 - 1.0) / (d as f64 - 1.0);
    assert!(
        (iso - expected).abs() < 0.05,
        "isoscore {iso} vs {expected}"
    );
}

#[test]
fn alignment_of_known_pairs() {
    let x = Embeddings {
        dim: 2,
        data: vec![1.0, 0.0, 0.0, 2.0],
    };
    let y = Embeddings {
        dim: 2,
        data: vec![0.0, 1.0, 0.0, 5.0],
    };
    // First pair orthogonal (‖·‖² = 2), second identical after normalising.
    assert!((alignment(&x, &y).unwrap() - 1.0).abs() < 1e-9);
}

#[test]
fn large_sets_use_a_seeded_sample_of_pairs() {
    let n = EXACT_PAIRS_LIMIT + 2000;
    let e = gaussian(n, 16, 4);
    let a = pair_stats(&e, 2.0, 20, 7).unwrap();
    let b = pair_stats(&e, 2.0, 20, 7).unwrap();
    assert!(!a.exact);
    assert_eq!(a.pairs, SAMPLED_PAIRS as u64);
    assert_eq!(a, b, "same seed, same sample");
    let exact_subset = Embeddings {
        dim: 16,
        data: e.data[..EXACT_PAIRS_LIMIT * 16].to_vec(),
    };
    let exact = pair_stats(&exact_subset, 2.0, 20, 0).unwrap();
    assert!(
        (a.uniformity - exact.uniformity).abs() < 0.01,
        "{} vs {}",
        a.uniformity,
        exact.uniformity
    );
}

#[test]
fn too_few_points_are_errors() {
    let one = Embeddings {
        dim: 2,
        data: vec![1.0, 0.0],
    };
    assert!(avg_cosine(&one).is_err());
    assert!(pair_stats(&one, 2.0, 10, 0).is_err());
}

#[test]
fn effective_rank_counts_rounding_level_eigenvalues_as_zero() {
    let spectrum = |eigenvalues: Vec<f64>| Spectrum {
        eigenvectors: vec![vec![0.0; eigenvalues.len()]; eigenvalues.len()],
        eigenvalues,
    };
    // Two equal axes and a rounding residue (below d·ε·λ_max): exactly 2.
    assert_eq!(effective_rank(&spectrum(vec![1.0, 1.0, 1e-17])), 2.0);
    // A small but real third axis counts.
    let r = effective_rank(&spectrum(vec![1.0, 1.0, 1e-6]));
    assert!(r > 2.0 && r < 2.01, "{r}");
}
