//! Embeddings equal those of the reference implementation (PyTorch +
//! transformers), from the fixture made by
//! scripts/reference/make_parity_fixture.py.

mod common;

use embedtune::{DeviceSpec, Embedder, EmbedderOptions, Pooling};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    max_len: usize,
    sentences: Vec<String>,
    token_counts: Vec<usize>,
    mean_normalized: Vec<Vec<f32>>,
    cls_raw: Vec<Vec<f32>>,
    /// The sentences of the raw rows below.
    pooled_rows: Vec<usize>,
    mean_raw: Vec<Vec<f32>>,
    max_raw: Vec<Vec<f32>>,
    first_last_avg_raw: Vec<Vec<f32>>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(common::fixture("minilm_parity.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Embeds every fixture sentence, or those of `rows`, and compares them
/// with `expected`.
fn check(pooling: Pooling, normalize: bool, rows: Option<&[usize]>, expected: &[Vec<f32>]) {
    let Some(model) = common::test_model() else {
        return;
    };
    let mut fx = fixture();
    let embedder = Embedder::from_pretrained(
        model.to_str().unwrap(),
        EmbedderOptions {
            pooling: Some(pooling),
            normalize: Some(normalize),
            max_len: Some(fx.max_len),
            batch_size: 16,
            device: DeviceSpec::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    // Tokenization first: the same token counts as the reference.
    let encoded = embedder.tokenizer().encode_all(&fx.sentences).unwrap();
    let counts: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    assert_eq!(counts, fx.token_counts);

    if let Some(rows) = rows {
        fx.sentences = rows.iter().map(|&i| fx.sentences[i].clone()).collect();
    }
    let got = embedder.embed(&fx.sentences).unwrap();
    assert_eq!(got.len(), expected.len());
    let mut worst_diff = 0f32;
    let mut worst_cos = 1f64;
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g.len(), e.len());
        for (a, b) in g.iter().zip(e) {
            worst_diff = worst_diff.max((a - b).abs());
        }
        worst_cos = worst_cos.min(common::cosine(g, e));
    }
    eprintln!("{pooling}: max |diff| {worst_diff:e}, min cosine {worst_cos}");
    assert!(worst_diff <= 1e-4, "max |diff| {worst_diff}");
    assert!(worst_cos >= 0.99999, "min cosine {worst_cos}");
}

#[test]
fn mean_pooling_normalized_matches_reference() {
    check(Pooling::Mean, true, None, &fixture().mean_normalized);
}

#[test]
fn cls_pooling_raw_matches_reference() {
    check(Pooling::Cls, false, None, &fixture().cls_raw);
}

/// Raw (unnormalised) pooled vectors: their scale counts, so a wrong
/// divisor in a mean shows here where normalised vectors hide it.
#[test]
fn raw_mean_max_and_first_last_avg_match_reference() {
    let fx = fixture();
    let rows = Some(&fx.pooled_rows[..]);
    check(Pooling::Mean, false, rows, &fx.mean_raw);
    check(Pooling::Max, false, rows, &fx.max_raw);
    check(Pooling::FirstLastAvg, false, rows, &fx.first_last_avg_raw);
}
