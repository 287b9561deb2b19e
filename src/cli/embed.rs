use std::path::PathBuf;

use clap::Args;
use embedtune::embed::{DEFAULT_CHUNK_ROWS, EmbedJob, Progress, Shard};
use embedtune::{Embedder, source};
use indicatif::ProgressBar;

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
    /// Rows read, embedded and saved at a time: memory is bounded by a
    /// chunk, and a stopped run loses at most one.
    #[arg(long = "chunk-size", default_value_t = DEFAULT_CHUNK_ROWS)]
    chunk_rows: usize,
    /// Continue a stopped or killed run of this OUT from its last finished
    /// chunk (kept in .OUT.partial/ beside it).
    #[arg(long)]
    resume: bool,
    /// Embed only part I of N (I from 0) of the rows, a contiguous range;
    /// the outputs of 0/N … N-1/N, concatenated in order, are the input's.
    #[arg(long, default_value = "0/1", value_parser = parse_shard)]
    shard: Shard,
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse().map_err(|e: embedtune::Error| e.to_string())
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let job = EmbedJob {
        data: args.data.clone(),
        column: args.column.clone(),
        out: args.out.clone(),
        chunk_rows: args.chunk_rows,
        shard: args.shard,
        resume: args.resume,
    };
    // Fail on a bad destination or input before loading anything: the
    // count reads, and so checks, every row.
    job.check()?;
    let counts = source::count_rows(&args.data, &args.column)?;
    let normalize = match (args.normalize, args.no_normalize) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let embedder = Embedder::from_pretrained(&args.model.model, args.model.options(normalize))?;
    // Warnings once the model has loaded: a failing run prints one line.
    if counts.invalid_utf8 > 0 {
        eprintln!(
            "warning: {} line(s) of {} are not valid UTF-8; embedded with U+FFFD in place of the bad bytes",
            counts.invalid_utf8,
            args.data.display()
        );
    }
    if counts.empty > 0 {
        eprintln!(
            "warning: {} row(s) of {} are empty or null; embedded as the empty text so rows stay aligned",
            counts.empty,
            args.data.display()
        );
    }
    let mut bar = Bar(None);
    let summary = job.run(&embedder, &counts, &mut bar)?;
    if let Some(b) = bar.0 {
        b.finish_and_clear();
    }
    if summary.resumed_rows > 0 {
        eprintln!(
            "resumed: {} of {} rows were finished by the stopped run",
            summary.resumed_rows,
            summary.rows.end - summary.rows.start
        );
    }
    eprintln!(
        "embedded {} texts{} ({} dims, {} pooling{}) → {}",
        summary.rows.end - summary.rows.start,
        if args.shard == Shard::WHOLE {
            String::new()
        } else {
            format!(
                " (rows {}..{} of {}, shard {})",
                summary.rows.start, summary.rows.end, counts.rows, args.shard
            )
        },
        embedder.dim(),
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

/// The progress bar over the whole job, resumed rows already counted.
struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, total: u64, done: u64) {
        let bar = progress::bar(total, "texts");
        bar.set_position(done);
        bar.reset_eta();
        self.0 = Some(bar);
    }
    fn advance(&mut self, rows: usize) {
        if let Some(b) = &self.0 {
            b.inc(rows as u64);
        }
    }
}
