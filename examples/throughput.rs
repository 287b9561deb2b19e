//! Measures embedtune's embedding or training throughput on a text file, for
//! benches/compare/compare.py (which runs PyTorch on the same inputs).
//!
//! cargo run --release --example throughput -- MODEL FILE embed|train [N_SENTENCES|N_STEPS]
//! Prints one JSON line: sentences_per_s, seconds, peak_rss_mib.
//! `throughput matmul` instead measures the matrix-product peak (GFLOP/s of
//! a 2048×384 by 384×1536 product, the shape of BERT-small's FFN).

use std::time::Instant;

use embedtune::layers::DropoutSeed;
use embedtune::losses::LossConfig;
use embedtune::rng::Rng;
use embedtune::training::forward::GraphSplit;
use embedtune::training::optim::{AdamW, AdamWParams};
use embedtune::training::trainer::{Objective, apply_gradients, gradients_split};
use embedtune::{DeviceSpec, Embedder, EmbedderOptions, Pooling, source};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// GFLOP/s of `out = a·b` for the FFN-like shape, best of a few rounds.
fn matmul_peak() -> f64 {
    use embedtune::kernels::matmul::{Mat, Threads, matmul};
    let (m, k, n) = (2048, 384, 1536);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut out = vec![0f32; m * n];
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..10 {
            matmul(
                &mut out,
                n,
                Mat::new(&a, m, k),
                Mat::new(&b, k, n),
                false,
                Threads::Pool,
            );
        }
        let s = start.elapsed().as_secs_f64() / 10.0;
        best = best.max(2.0 * (m * k * n) as f64 / s / 1e9);
    }
    best
}

/// EMBEDTUNE_GRAPH_GROUPS (the most passes a step's rows are split into
/// by length on the candle graph route; 1: one padded pass) and
/// EMBEDTUNE_GRAPH_PASS_COST (padded tokens an extra pass must save), each
/// defaulting to [`GraphSplit::for_device`]'s; for scripts/gpu_check.py.
fn graph_split(device: &candle_core::Device) -> anyhow::Result<GraphSplit> {
    let mut split = GraphSplit::for_device(device);
    if let Ok(n) = std::env::var("EMBEDTUNE_GRAPH_GROUPS") {
        split.max_groups = match n.parse::<usize>() {
            Ok(g) if g >= 1 => g,
            _ => anyhow::bail!("EMBEDTUNE_GRAPH_GROUPS={n}: not a number of passes (1 or more)"),
        };
    }
    if let Ok(c) = std::env::var("EMBEDTUNE_GRAPH_PASS_COST") {
        split.pass_cost = c.parse().map_err(|_| {
            anyhow::anyhow!("EMBEDTUNE_GRAPH_PASS_COST={c}: not a number of tokens")
        })?;
    }
    Ok(split)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("matmul") {
        println!(
            "{}",
            serde_json::json!({"impl": "embedtune", "matmul_gflops": matmul_peak()})
        );
        return Ok(());
    }
    let [_, model, file, mode, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: throughput MODEL FILE embed|train [N]");
    };
    let texts = source::read_texts(file.as_ref(), "text")?.texts;
    let train = mode == "train";
    // EMBEDTUNE_DEVICE (cpu, cuda, …; default cpu) and EMBEDTUNE_DTYPE
    // (f32, bf16, f16; default f32), for scripts/gpu_check.py.
    let device: DeviceSpec = std::env::var("EMBEDTUNE_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()?;
    let dtype = match std::env::var("EMBEDTUNE_DTYPE").as_deref() {
        Err(_) | Ok("f32") => candle_core::DType::F32,
        Ok("bf16") => candle_core::DType::BF16,
        Ok("f16") => candle_core::DType::F16,
        Ok(other) => anyhow::bail!("EMBEDTUNE_DTYPE={other}: not one of f32, bf16, f16"),
    };
    // EMBEDTUNE_MAX_LEN: tokens per sentence at most (default 32).
    let max_len: usize = std::env::var("EMBEDTUNE_MAX_LEN").map_or(Ok(32), |s| s.parse())?;
    let embedder = Embedder::from_pretrained(
        model,
        EmbedderOptions {
            pooling: Some(Pooling::Cls),
            max_len: Some(max_len),
            batch_size: 64,
            device,
            dtype,
            trainable: train,
            ..Default::default()
        },
    )?;
    let (sentences, seconds) = if train {
        let steps: usize = rest.first().map_or(Ok(5), |s| s.parse())?;
        let split = graph_split(embedder.device())?;
        let mut optim = AdamW::for_weights(&embedder.model().weights, AdamWParams::default())?;
        let cfg = LossConfig::align_uniform();
        let mut rng = Rng::new(0);
        let mut step = |batch: &[String]| -> anyhow::Result<()> {
            let dropout = DropoutSeed::draw(&mut rng);
            let loss = Objective::from(&cfg);
            let g = gradients_split(&embedder, dropout, batch, &loss, split, &mut |l| Ok(l))?;
            apply_gradients(&mut optim, g, 1e-5, Some(1.0))?;
            Ok(())
        };
        // One warm-up step, not timed.
        step(&texts[..64])?;
        let start = Instant::now();
        for s in 0..steps {
            step(&texts[(s + 1) * 64 % (texts.len() - 64)..][..64])?;
        }
        (steps * 64, start.elapsed().as_secs_f64())
    } else {
        let n: usize = rest.first().map_or(Ok(texts.len()), |s| s.parse())?;
        let texts = &texts[..n.min(texts.len())];
        embedder.embed_all(&texts[..64.min(texts.len())], &mut |_| {})?;
        let start = Instant::now();
        embedder.embed_all(texts, &mut |_| {})?;
        (texts.len(), start.elapsed().as_secs_f64())
    };
    println!(
        "{}",
        serde_json::json!({
            "impl": "embedtune", "mode": mode, "sentences": sentences, "seconds": seconds,
            "sentences_per_s": sentences as f64 / seconds, "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
