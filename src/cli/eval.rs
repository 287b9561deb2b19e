use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use embedtune::report::{self, Format};
use embedtune::{Embedder, sts};

use super::ModelArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// STS pairs: STS-benchmark layout, or .jsonl/.csv with sentence1, sentence2, score.
    #[arg(long)]
    sts: PathBuf,
    /// table, json or markdown
    #[arg(long, default_value = "table")]
    format: Format,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let pairs = sts::read_pairs(&args.sts)?;
    let embedder = Embedder::from_pretrained(&args.model.model, args.model.options(None))?;
    let result =
        sts::evaluate(&embedder, &pairs).with_context(|| args.sts.display().to_string())?;
    print!(
        "{}",
        report::sts(
            &args.model.model,
            embedder.pooling().name(),
            &result,
            args.format
        )?
    );
    Ok(())
}
