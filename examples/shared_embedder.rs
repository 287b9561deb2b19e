//! Aggregate embedding throughput of several threads sharing one
//! `Embedder` (no lock, no copy of the model), against one thread.
//!
//! cargo run --release --example shared_embedder -- [MODEL] [ROUNDS] [SENTENCES]
//!
//! The same sentences (the built-in probe, max length 32, batch 64, CLS) are
//! embedded by 1, 2 and 4 threads, each thread taking an equal share; the
//! thread counts alternate within each round and the medians are printed,
//! one JSON line per thread count.

use std::sync::Arc;
use std::time::Instant;

use embedtune::diagnose::default_probe;
use embedtune::{DeviceSpec, Embedder, EmbedderOptions, Pooling};

/// Seconds for `threads` threads to embed `texts` between them.
fn run(embedder: &Arc<Embedder>, texts: &[String], threads: usize) -> f64 {
    let share = texts.len().div_ceil(threads);
    let started = Instant::now();
    std::thread::scope(|s| {
        for chunk in texts.chunks(share) {
            let e = embedder.clone();
            s.spawn(move || e.embed_all(chunk, &mut |_| {}).expect("embed"));
        }
    });
    started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).cloned().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/models/all-MiniLM-L6-v2"
        )
        .to_string()
    });
    let rounds: usize = args.get(2).map_or(Ok(5), |s| s.parse())?;
    let n: usize = args.get(3).map_or(Ok(512), |s| s.parse())?;
    let embedder = Arc::new(Embedder::from_pretrained(
        &model,
        EmbedderOptions {
            pooling: Some(Pooling::Cls),
            max_len: Some(32),
            batch_size: 64,
            device: DeviceSpec::Cpu,
            ..Default::default()
        },
    )?);
    let texts: Vec<String> = default_probe().into_iter().cycle().take(n).collect();
    let counts = [1usize, 2, 4];
    run(&embedder, &texts, 1); // warm-up
    let mut seconds = vec![Vec::new(); counts.len()];
    for _ in 0..rounds {
        for (i, &t) in counts.iter().enumerate() {
            seconds[i].push(run(&embedder, &texts, t));
        }
    }
    let single = n as f64 / median(seconds[0].clone());
    for (&t, s) in counts.iter().zip(seconds) {
        let rate = n as f64 / median(s);
        println!(
            "{}",
            serde_json::json!({
                "threads": t,
                "sentences": n,
                "rounds": rounds,
                "median_sentences_per_s": (rate * 10.0).round() / 10.0,
                "vs_one_thread": (rate / single * 1000.0).round() / 1000.0,
            })
        );
    }
    Ok(())
}
