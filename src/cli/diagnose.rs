use std::path::PathBuf;

use clap::Args;
use embedtune::diagnose::stats::{self, StatsOptions};
use embedtune::diagnose::{self, DiagnoseOptions, Diagnosis};
use embedtune::report::{self, Format, card::write_text};
use embedtune::{Embedder, source};

use super::{ModelArgs, progress};

#[derive(Args)]
// --model is needed unless the vectors are given (checked in `run`).
#[command(mut_arg("model", |a| a.required(false).default_value("").hide_default_value(true)))]
pub struct DiagnoseArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Probe sentences (same formats as `embed`) [default: ~1,000 built-in sentences]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Text column of tabular inputs.
    #[arg(long, default_value = "text")]
    column: String,
    /// Use at most N sentences (a seeded sample).
    #[arg(long)]
    max_samples: Option<usize>,
    /// Seed for sampling (the probe, the --embeddings reservoir) and the dropout masks of `alignment`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// table, json or markdown
    #[arg(long, default_value = "table")]
    format: Format,
    /// Write SVG figures into this folder.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A second model to run on the same probe, shown side by side.
    #[arg(long)]
    compare: Option<String>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Diagnose saved vectors instead of a model: `embed` outputs (.npy,
    /// .parquet, .arrow, .jsonl); several files are one dataset, streamed
    #[arg(long, num_args = 1.., value_name = "FILE", conflicts_with_all = ["data", "max_samples", "compare"])]
    embeddings: Vec<PathBuf>,
    /// Merge partial statistics saved by --save-stats (with or without --embeddings)
    #[arg(long, num_args = 1.., value_name = "FILE", conflicts_with_all = ["data", "max_samples", "compare"])]
    stats: Vec<PathBuf>,
    /// Save the mergeable statistics of --embeddings (and --stats) to FILE
    #[arg(long, value_name = "FILE")]
    save_stats: Option<PathBuf>,
    /// Vectors kept (a seeded, order-independent sample) for uniformity, the histogram and the circle [default: 10000]
    #[arg(long)]
    reservoir: Option<usize>,
}

pub fn run(args: DiagnoseArgs) -> anyhow::Result<()> {
    if !args.embeddings.is_empty() || !args.stats.is_empty() {
        return run_vectors(&args);
    }
    if args.model.model.is_empty() {
        anyhow::bail!("diagnose needs --model (or --embeddings FILE... to diagnose saved vectors)");
    }
    if args.save_stats.is_some() || args.reservoir.is_some() {
        anyhow::bail!("--save-stats and --reservoir go with --embeddings or --stats");
    }
    if let Some(out) = &args.json {
        diagnose::check_output(out)?;
    }
    if let Some(dir) = &args.plot {
        report::plots::prepare_dir(dir)?;
    }
    let texts = match &args.data {
        Some(path) => source::read_texts(path, &args.column)?.texts,
        None => diagnose::default_probe(),
    };
    if let Some(k) = args.max_samples.filter(|&k| k < 2) {
        anyhow::bail!("--max-samples {k}: diagnose needs at least 2 sentences");
    }
    if texts.len() < 2 {
        let source = args.data.as_deref().unwrap_or("the probe".as_ref());
        anyhow::bail!(
            "{}: has {} sentence(s); diagnose needs at least 2 sentences",
            source.display(),
            texts.len()
        );
    }
    let opts = DiagnoseOptions {
        max_samples: args.max_samples,
        seed: args.seed,
        ..Default::default()
    };
    // Both models load before any work, so a broken --compare fails at once.
    let load = |model: &str| -> anyhow::Result<Embedder> {
        Ok(Embedder::from_pretrained(model, args.model.options(None))?)
    };
    let first = load(&args.model.model)?;
    let second = args.compare.as_deref().map(load).transpose()?;
    let run_one = |model: &str, embedder: &Embedder| -> anyhow::Result<Diagnosis> {
        eprintln!(
            "diagnosing {model} ({} pooling) on {} sentences…",
            embedder.pooling(),
            texts.len().min(args.max_samples.unwrap_or(usize::MAX))
        );
        Ok(diagnose::diagnose(embedder, &texts, &opts)?)
    };
    let a = run_one(&args.model.model, &first)?;
    drop(first);
    let b = match (&args.compare, &second) {
        (Some(name), Some(embedder)) => Some(run_one(name, embedder)?),
        _ => None,
    };
    let text = match &b {
        Some(b) => report::comparison(&a, b, args.format)?,
        None => report::diagnosis(&a, args.format)?,
    };
    print!("{text}");
    if let Some(path) = &args.json {
        let json = match &b {
            Some(b) => report::comparison(&a, b, Format::Json)?,
            None => report::diagnosis(&a, Format::Json)?,
        };
        write_text(path, json + "\n")?;
    }
    plot(&args, &[&a])?;
    Ok(())
}

fn plot(args: &DiagnoseArgs, all: &[&Diagnosis]) -> anyhow::Result<()> {
    if let Some(dir) = &args.plot {
        for path in report::write_plots(dir, all)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// `--embeddings` / `--stats`: the pooled-vector figures of saved vectors,
/// streamed, and merged with saved partial statistics.
fn run_vectors(args: &DiagnoseArgs) -> anyhow::Result<()> {
    if !args.model.model.is_empty() {
        anyhow::bail!(
            "--embeddings and --stats diagnose saved vectors; --model is not used with them"
        );
    }
    let opts = StatsOptions {
        seed: args.seed,
        reservoir: args.reservoir.unwrap_or(StatsOptions::default().reservoir),
        ..StatsOptions::default()
    };
    opts.check()?;
    if let Some(dir) = &args.plot {
        report::plots::prepare_dir(dir)?;
    }
    for out in args.save_stats.iter().chain(&args.json) {
        diagnose::check_output(out)?;
    }
    let mut merged = stats::merge_files(&args.stats)?;
    if !args.embeddings.is_empty() {
        let files = source::vectors::open_all(&args.embeddings)?;
        let total: Option<u64> = files.iter().map(|f| f.rows()).sum();
        let bar = match total {
            Some(total) => progress::bar(total, "vectors"),
            None => progress::counter("vectors"),
        };
        let read = stats::of_files(files, opts, &mut |n| bar.set_position(n))?;
        bar.finish_and_clear();
        match &mut merged {
            Some(m) => m.merge(&read)?,
            None => merged = Some(read),
        }
    }
    let Some(stats) = merged else {
        anyhow::bail!("no vectors: give --embeddings FILE... or --stats FILE...");
    };
    if let Some(out) = &args.save_stats {
        write_text(out, stats.to_bytes())?;
        eprintln!("wrote {} ({} vectors)", out.display(), stats.len());
    }
    let name = vectors_name(args);
    let v = stats.finish()?;
    print!("{}", report::vectors(&name, &v, args.format)?);
    if let Some(path) = &args.json {
        write_text(path, report::vectors(&name, &v, Format::Json)? + "\n")?;
    }
    plot(args, &[&Diagnosis::of_vectors(v, &name)])
}

/// The files behind a vectors diagnosis, for the report.
fn vectors_name(args: &DiagnoseArgs) -> String {
    let names: Vec<String> = args
        .embeddings
        .iter()
        .chain(&args.stats)
        .map(|p| p.display().to_string())
        .collect();
    match names.len() {
        0..=3 => names.join(", "),
        k => format!("{}, … ({k} files)", names[..2].join(", ")),
    }
}
