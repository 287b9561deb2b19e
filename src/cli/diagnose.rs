use std::path::PathBuf;

use clap::Args;
use embedtune::diagnose::{self, DiagnoseOptions, Diagnosis};
use embedtune::report::{self, Format};
use embedtune::{Embedder, source};

use super::ModelArgs;

#[derive(Args)]
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
    /// Seed for sampling and the dropout masks of `alignment`.
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
}

pub fn run(args: DiagnoseArgs) -> anyhow::Result<()> {
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
    if let Some(dir) = &args.plot {
        let all: Vec<&Diagnosis> = std::iter::once(&a).chain(b.as_ref()).collect();
        for path in report::write_plots(dir, &all)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
