use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, ValueEnum};
use embedtune::losses::LossConfig;
use embedtune::training::optim::AdamWParams;
use embedtune::training::{
    self, FitJob, FitOutcome, Observer, PostMap, StepRecord, TrainConfig, recipes,
};
use embedtune::{DeviceSpec, Pooling};
use indicatif::ProgressBar;

use super::{CorpusArgs, progress};

#[derive(Clone, Copy, ValueEnum)]
enum LossKind {
    /// Wang & Isola: w_align·align(α) + w_uniform·uniform(t).
    AlignUniform,
    /// SimCSE's in-batch contrastive loss (temperature τ).
    Infonce,
    /// Both.
    Combined,
}

#[derive(Args)]
pub struct FitArgs {
    /// Base model: a folder or a Hub id.
    #[arg(long)]
    model: String,
    /// Corpus: a file or a folder of .txt (one sentence per line), .jsonl, .csv, .tsv, .parquet, .arrow files.
    #[arg(long)]
    data: PathBuf,
    /// Output folder for the fine-tuned model (sentence-transformers layout).
    #[arg(long)]
    out: PathBuf,
    /// cls, mean or max [default: the model's pooling, else cls]
    #[arg(long)]
    pooling: Option<Pooling>,
    /// A measured preset of loss, batch, steps, learning rate and post-hoc map (see the README): infonce-center, infonce-whiten.
    #[arg(long, conflicts_with_all = ["loss", "w_align", "w_uniform", "w_infonce", "alpha", "t", "tau", "lr", "batch_size", "mini_batch", "steps", "epochs"])]
    recipe: Option<String>,
    #[arg(long, value_enum, default_value = "align-uniform")]
    loss: LossKind,
    #[arg(long, default_value_t = 1.0)]
    w_align: f64,
    #[arg(long, default_value_t = 1.0)]
    w_uniform: f64,
    #[arg(long, default_value_t = 1.0)]
    w_infonce: f64,
    /// Exponent of the alignment distance.
    #[arg(long, default_value_t = 2.0)]
    alpha: f64,
    /// Uniformity temperature.
    #[arg(long, default_value_t = 2.0)]
    t: f64,
    /// InfoNCE temperature.
    #[arg(long, default_value_t = 0.05)]
    tau: f64,
    #[arg(long, default_value_t = 3e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Share of the steps spent on linear warm-up.
    #[arg(long, default_value_t = 0.1)]
    warmup_ratio: f64,
    /// Clip the global gradient norm (0 turns clipping off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Gradient caching: encode the batch's 2 × B rows in chunks of this many (same gradients, memory of a chunk).
    #[arg(long)]
    mini_batch: Option<usize>,
    #[arg(long, default_value_t = 32)]
    max_len: usize,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Train this many steps (overrides --epochs).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// STS file to evaluate on while training; the best checkpoint by Spearman is kept.
    #[arg(long)]
    eval_sts: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    #[arg(long, default_value_t = 100)]
    save_every: usize,
    /// Write a train_log.jsonl record every N steps.
    #[arg(long, default_value_t = 1)]
    log_every: usize,
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Continue the run whose checkpoints are in --out.
    #[arg(long)]
    resume: bool,
    /// Replace an existing --out.
    #[arg(long)]
    overwrite: bool,
    /// auto, cpu, cuda, cuda:N or metal
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
}

impl FitArgs {
    fn loss(&self) -> LossConfig {
        let base = LossConfig {
            alpha: self.alpha,
            t: self.t,
            tau: self.tau,
            ..LossConfig::align_uniform()
        };
        let (a, u, n) = (self.w_align, self.w_uniform, self.w_infonce);
        match self.loss {
            LossKind::AlignUniform => LossConfig {
                w_align: a,
                w_uniform: u,
                w_info_nce: 0.0,
                ..base
            },
            LossKind::Infonce => LossConfig {
                w_align: 0.0,
                w_uniform: 0.0,
                w_info_nce: n,
                ..base
            },
            LossKind::Combined => LossConfig {
                w_align: a,
                w_uniform: u,
                w_info_nce: n,
                ..base
            },
        }
    }
}

/// Progress bar, messages and Ctrl-C.
struct Cli {
    bar: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
}

impl Observer for Cli {
    fn on_start(&mut self, start: usize, total: usize) {
        let bar = progress::bar(total as u64, "steps");
        bar.set_position(start as u64);
        self.bar = Some(bar);
    }
    fn on_step(&mut self, r: &StepRecord) {
        if let Some(bar) = &self.bar {
            bar.set_position(r.step as u64);
            let mut msg = format!(
                "loss {:.4} align {:.4} uniform {:.4} lr {:.2e} {:.1} sent/s",
                r.loss, r.align, r.uniform, r.lr, r.sentences_per_s
            );
            if let Some(e) = &r.eval {
                if let Some(s) = e.sts_spearman {
                    msg += &format!(" sts {s:.2}");
                }
                bar.println(format!(
                    "step {}: held-out alignment {:.4}, uniformity {:.4}{}",
                    r.step,
                    e.heldout_alignment,
                    e.heldout_uniformity,
                    e.sts_spearman
                        .map(|s| format!(", STS Spearman {s:.2}"))
                        .unwrap_or_default()
                ));
            }
            bar.set_message(msg);
        }
    }
    fn on_message(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

pub fn run(args: FitArgs) -> anyhow::Result<()> {
    let mut job = FitJob {
        model: args.model.clone(),
        data: args.data.clone(),
        out: args.out.clone(),
        corpus: args.corpus.options(args.seed),
        train: TrainConfig {
            loss: args.loss(),
            lr: args.lr,
            adamw: AdamWParams {
                weight_decay: args.weight_decay,
                ..AdamWParams::default()
            },
            warmup_ratio: args.warmup_ratio,
            max_grad_norm: (args.max_grad_norm != 0.0).then_some(args.max_grad_norm),
            batch_size: args.batch_size,
            mini_batch: args.mini_batch,
            epochs: args.epochs,
            steps: args.steps,
            seed: args.seed,
            eval_every: args.eval_every,
            save_every: args.save_every,
            log_every: args.log_every,
            ..TrainConfig::default()
        },
        pooling: args.pooling,
        max_len: args.max_len,
        device: args.device,
        eval_sts: args.eval_sts.clone(),
        resume: args.resume,
        overwrite: args.overwrite,
        post: None,
    };
    if let Some(name) = &args.recipe {
        let r = recipes::recipe(name)?;
        job.train.loss = r.loss;
        job.train.lr = r.lr;
        job.train.batch_size = r.batch_size;
        job.train.mini_batch = r.mini_batch;
        job.train.steps = Some(r.steps);
        job.post = r.post.map(|method| PostMap {
            method,
            samples: r.post_samples,
        });
        eprintln!("recipe {}: {}", r.name, r.summary);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C or SIGTERM (timeout, docker stop, Slurm) checkpoints and stops;
    // a second one while the checkpoint is written exits at once.
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            embedtune::output::remove_temporaries();
            std::process::exit(130);
        }
    })?;
    let mut cli = Cli { bar: None, stop };
    let outcome = training::fit(&job, &mut cli)?;
    if let Some(bar) = &cli.bar {
        bar.finish_and_clear();
    }
    match outcome {
        FitOutcome::Interrupted { step, out } => {
            eprintln!(
                "interrupted: checkpoint at step {step} saved; continue with the same command and --resume ({})",
                out.display()
            );
            std::process::exit(130);
        }
        FitOutcome::Done(r) => {
            println!(
                "saved {} (weights of step {})",
                args.out.display(),
                r.saved_step
            );
            super::print_before_after(
                &r.before,
                &r.after,
                r.sts_before.as_ref(),
                r.sts_after.as_ref(),
            );
        }
    }
    Ok(())
}
