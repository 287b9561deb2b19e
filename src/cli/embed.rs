use std::path::PathBuf;

use clap::Args;
use embedtune::{Embedder, output, source};

use super::{ModelArgs, progress};

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input: .txt (one text per line), .jsonl, .csv, .tsv, .parquet or .arrow.
    #[arg(long)]
    data: PathBuf,
    /// Text column of tabular inputs.
    #[arg(long, default_value = "text")]
    column: String,
    /// Output file: .jsonl, .npy, .parquet or .arrow.
    #[arg(long)]
    out: PathBuf,
    /// Unit-norm vectors [default: on when the model lists a Normalize module]
    #[arg(long, overrides_with = "no_normalize")]
    normalize: bool,
    /// Raw pooled vectors, even when the model normalises.
    #[arg(long)]
    no_normalize: bool,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    // Fail on a bad destination before loading anything.
    output::check_destination(&args.out)?;
    if args.data.is_file() {
        output::check_not_input(&args.out, "--data", &args.data)?;
    }
    // One vector per input row, so that row i of OUT is row i of the input.
    let texts = source::read_rows(&args.data, &args.column)?;
    let normalize = match (args.normalize, args.no_normalize) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let embedder = Embedder::from_pretrained(&args.model.model, args.model.options(normalize))?;
    // Warnings once the model has loaded: a failing run prints one line.
    if texts.invalid_utf8 > 0 {
        eprintln!(
            "warning: {} line(s) of {} are not valid UTF-8; embedded with U+FFFD in place of the bad bytes",
            texts.invalid_utf8,
            args.data.display()
        );
    }
    if texts.empty > 0 {
        eprintln!(
            "warning: {} row(s) of {} are empty or null; embedded as the empty text so rows stay aligned",
            texts.empty,
            args.data.display()
        );
    }
    let bar = progress::bar(texts.texts.len() as u64, "texts");
    let embeddings = embedder.embed_all(&texts.texts, &mut |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    output::write_embeddings(&args.out, &texts.texts, &embeddings)?;
    eprintln!(
        "embedded {} texts ({} dims, {} pooling{}) → {}",
        embeddings.len(),
        embeddings.dim,
        embedder.pooling(),
        if embedder.normalize() {
            ", normalized"
        } else {
            ""
        },
        args.out.display()
    );
    Ok(())
}
