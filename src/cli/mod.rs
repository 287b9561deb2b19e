//! Command definitions. Each subcommand parses its flags, calls the library
//! and prints; no model or metric logic lives here.

mod diagnose;
mod embed;
mod eval;
mod fit;
mod progress;
mod whiten;

use candle_core::DType;
use clap::{Args, Parser, Subcommand};
use embedtune::diagnose::Diagnosis;
use embedtune::sts::StsResult;
use embedtune::{DeviceSpec, EmbedderOptions, Pooling};

#[derive(Parser)]
#[command(
    name = "embedtune",
    version,
    about = "Sentence embeddings: diagnose anisotropy, fine-tune for alignment and uniformity, embed, evaluate"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts from a file and write the vectors (.jsonl, .npy, .parquet, .arrow).
    Embed(embed::EmbedArgs),
    /// Measure anisotropy: average cosine, uniformity, alignment, spectrum, per layer; SVG figures.
    Diagnose(diagnose::DiagnoseArgs),
    /// STS evaluation: Spearman and Pearson ×100 of cosine similarity against gold scores.
    Eval(eval::EvalArgs),
    /// Fine-tune with alignment + uniformity (or InfoNCE) on dropout pairs; saves a sentence-transformers model.
    Fit(fit::FitArgs),
    /// Post-hoc whitening or all-but-the-top from unlabeled text, saved as a Dense module.
    Whiten(whiten::WhitenArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Embed(args) => exit_cleanly_on_signal(|| embed::run(args)),
        Command::Diagnose(args) => exit_cleanly_on_signal(|| diagnose::run(args)),
        Command::Eval(args) => exit_cleanly_on_signal(|| eval::run(args)),
        Command::Fit(args) => fit::run(args),
        Command::Whiten(args) => whiten::run(args),
    }
}

/// Runs `f`; Ctrl-C or SIGTERM removes the files being written and exits.
fn exit_cleanly_on_signal(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        embedtune::output::remove_temporaries();
        std::process::exit(130);
    })?;
    f()
}

/// Flags shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A model folder, or a Hugging Face Hub id (`org/name` or `org/name@revision`).
    #[arg(long)]
    pub model: String,
    /// cls, mean, max or first-last-avg [default: the model's 1_Pooling config, else cls]
    #[arg(long)]
    pub pooling: Option<Pooling>,
    /// Maximum tokens per text [default: the model's max_seq_length, else 512]
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// auto, cpu, cuda, cuda:N or metal
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Compute precision: f32, bf16 or f16 (the weights are converted on load;
    /// vectors are written as f32)
    #[arg(long, default_value = "f32", value_parser = embedtune::device::parse_dtype)]
    pub dtype: DType,
}

impl ModelArgs {
    pub fn options(&self, normalize: Option<bool>) -> EmbedderOptions {
        EmbedderOptions {
            pooling: self.pooling,
            normalize,
            max_len: self.max_len,
            batch_size: self.batch_size,
            device: self.device,
            dtype: self.dtype,
            ..EmbedderOptions::default()
        }
    }
}

/// The before/after lines `fit` and `whiten` print.
pub fn print_before_after(
    before: &Diagnosis,
    after: &Diagnosis,
    sts_before: Option<&StsResult>,
    sts_after: Option<&StsResult>,
) {
    println!(
        "{:<22}{:>10}{:>10}",
        "held-back sentences", "before", "after"
    );
    for (k, b, a) in [
        ("avg_cosine", before.avg_cosine, after.avg_cosine),
        ("uniformity", before.uniformity, after.uniformity),
        ("alignment", before.alignment, after.alignment),
    ] {
        println!("{k:<22}{b:>10.4}{a:>10.4}");
    }
    if let (Some(b), Some(a)) = (sts_before, sts_after) {
        println!(
            "{:<22}{:>10.2}{:>10.2}",
            "STS Spearman", b.spearman, a.spearman
        );
    }
}
