use std::path::PathBuf;

use clap::{Args, ValueEnum};
use embedtune::training::args::CorpusArgs;
use embedtune::whiten::{self, Method, Progress, WhitenJob};
use indicatif::ProgressBar;

use super::{ModelArgs, progress};

#[derive(Clone, Copy, ValueEnum)]
enum MethodKind {
    /// μ and W = U·Λ^(−1/2), truncated to --dim (Su et al., 2021).
    Whitening,
    /// All-but-the-top: subtract μ and the top --remove principal directions (Mu & Viswanath, 2018).
    Abtt,
}

#[derive(Args)]
pub struct WhitenArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Sentences to compute the map from (same formats and split as `fit --data`).
    #[arg(long)]
    data: PathBuf,
    /// Output folder: the model plus a sentence-transformers Dense module.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "whitening")]
    method: MethodKind,
    /// Whitening: keep this many dimensions [default: all]
    #[arg(long)]
    dim: Option<usize>,
    /// ABTT: principal directions to remove.
    #[arg(long, default_value_t = 1)]
    remove: usize,
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Seed of the held-back sample and of the dropout masks of `alignment`.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// STS file to evaluate before and after.
    #[arg(long)]
    eval_sts: Option<PathBuf>,
    /// Replace an existing --out.
    #[arg(long)]
    overwrite: bool,
}

struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn message(&mut self, message: &str) {
        match &self.0 {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
    fn start(&mut self, total: usize) {
        self.0 = Some(progress::bar(total as u64, "sentences"));
    }
    fn embedded(&mut self, done: usize) {
        if let Some(bar) = &self.0 {
            bar.set_position(done as u64);
        }
    }
}

pub fn run(args: WhitenArgs) -> anyhow::Result<()> {
    let method = match args.method {
        MethodKind::Whitening => Method::Whitening { dim: args.dim },
        MethodKind::Abtt => Method::Abtt {
            remove: args.remove,
        },
    };
    if matches!(args.method, MethodKind::Abtt) && args.dim.is_some() {
        anyhow::bail!("--dim applies to --method whitening; ABTT keeps every dimension");
    }
    let job = WhitenJob {
        model: args.model.model.clone(),
        data: args.data.clone(),
        out: args.out.clone(),
        corpus: args.corpus.options(args.seed),
        method,
        pooling: args.model.pooling,
        max_len: args.model.max_len,
        batch_size: args.model.batch_size,
        device: args.model.device,
        eval_sts: args.eval_sts.clone(),
        overwrite: args.overwrite,
    };
    let mut bar = Bar(None);
    let r = whiten::whiten(&job, &mut bar)?;
    if let Some(b) = &bar.0 {
        b.finish_and_clear();
    }
    println!(
        "saved {} ({}; Dense {} → {})",
        args.out.display(),
        r.description,
        r.in_features,
        r.out_features
    );
    super::print_before_after(
        &r.before,
        &r.after,
        r.sts_before.as_ref(),
        r.sts_after.as_ref(),
    );
    Ok(())
}
