//! Throughput benches: encoder forward, one training step, the losses and
//! the diagnose metrics. Run with `cargo bench --bench throughput`.
//!
//! The model is `EMBEDTUNE_BENCH_MODEL`, else `../shared/models/all-MiniLM-L6-v2`;
//! the sentences are the built-in probe set, at max length 32.

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use embedtune::diagnose::default_probe;
use embedtune::layers::DropoutSeed;
use embedtune::losses::{self, LossConfig};
use embedtune::metrics::{self, Spectrum};
use embedtune::rng::Rng;
use embedtune::training::optim::{AdamW, AdamWParams};
use embedtune::training::trainer::{Objective, train_step};
use embedtune::{DeviceSpec, Embedder, EmbedderOptions, Embeddings, Pooling};

fn main() {
    divan::main();
}

fn model_path() -> String {
    std::env::var("EMBEDTUNE_BENCH_MODEL").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/models/all-MiniLM-L6-v2"
        )
        .to_string()
    })
}

fn embedder(trainable: bool) -> Embedder {
    Embedder::from_pretrained(
        &model_path(),
        EmbedderOptions {
            pooling: Some(Pooling::Cls),
            max_len: Some(32),
            batch_size: 64,
            device: DeviceSpec::Cpu,
            trainable,
            ..Default::default()
        },
    )
    .expect("bench model (set EMBEDTUNE_BENCH_MODEL)")
}

fn sentences(n: usize) -> Vec<String> {
    default_probe().into_iter().take(n).collect()
}

/// Eval-mode embedding of 256 sentences (4 batches of 64).
#[divan::bench(sample_count = 5)]
fn embed_256_sentences(bencher: divan::Bencher) {
    static E: OnceLock<Embedder> = OnceLock::new();
    let e = E.get_or_init(|| embedder(false));
    let texts = sentences(256);
    bencher
        .counter(divan::counter::ItemsCount::new(texts.len()))
        .bench(|| e.embed_all(&texts, &mut |_| {}).unwrap());
}

/// One align+uniform step: 64 sentences → 128 dropout rows, backward, AdamW.
#[divan::bench(sample_count = 3)]
fn train_step_batch_64(bencher: divan::Bencher) {
    let e = embedder(true);
    let vars = e.model().weights.vars();
    let mut optim = AdamW::new(&vars, AdamWParams::default()).unwrap();
    let texts = sentences(64);
    let cfg = LossConfig::align_uniform();
    let mut rng = Rng::new(0);
    bencher
        .counter(divan::counter::ItemsCount::new(64usize))
        .bench_local(|| {
            train_step(
                &e,
                &mut optim,
                DropoutSeed::draw(&mut rng),
                &texts,
                &Objective::from(&cfg),
                1e-5,
                Some(1.0),
                &mut |l| Ok(l),
            )
            .unwrap()
        });
}

fn random(n: usize, d: usize) -> Embeddings {
    let mut rng = Rng::new(1);
    Embeddings {
        dim: d,
        data: (0..n * d).map(|_| rng.normal() as f32).collect(),
    }
}

#[divan::bench]
fn losses_128x384(bencher: divan::Bencher) {
    let e = random(256, 384);
    let x = Tensor::from_slice(&e.data[..128 * 384], (128, 384), &Device::Cpu).unwrap();
    let y = Tensor::from_slice(&e.data[128 * 384..], (128, 384), &Device::Cpu).unwrap();
    let cfg = LossConfig::combined();
    bencher.bench(|| {
        losses::combined(&x, &y, None, &cfg)
            .unwrap()
            .total
            .to_scalar::<f32>()
            .unwrap()
    });
}

#[divan::bench(sample_count = 3)]
fn diagnose_metrics_10000x384(bencher: divan::Bencher) {
    let e = random(10_000, 384);
    bencher.bench(|| {
        let stats = metrics::pair_stats(&e, 2.0, 100, 0).unwrap();
        let unit = metrics::normalized(&e);
        let s = Spectrum::of(&unit, true).unwrap();
        (
            stats.uniformity,
            metrics::avg_cosine(&e).unwrap(),
            metrics::effective_rank(&s),
            metrics::isoscore(&s),
        )
    });
}

/// `diagnose --embeddings`' per-chunk work: the exact sums and the
/// reservoir over 10,000 × 384 vectors (no `finish`).
#[divan::bench(sample_count = 3)]
fn vector_stats_add_10000x384(bencher: divan::Bencher) {
    use embedtune::diagnose::stats::{StatsOptions, VectorStats};
    let e = random(10_000, 384);
    bencher.bench(|| {
        let mut s = VectorStats::new(384, StatsOptions::default());
        s.add(&e.data).unwrap();
        s.len()
    });
}
