//! `fit`'s settings by flag name, with their defaults: the one parameter
//! list behind the binary's `embedtune fit` flags and the Python package's
//! `fit(model, data, out, **opts)` (which passes its keywords as these
//! flags), so the two cannot drift apart.

use std::path::PathBuf;

use candle_core::DType;
use clap::{Args, Parser, ValueEnum};

use super::optim::AdamWParams;
use super::{CorpusOptions, FitJob, PostMap, TrainConfig, recipes};
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::losses::LossConfig;
use crate::pooling::Pooling;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LossKind {
    /// Wang & Isola: w_align·align(α) + w_uniform·uniform(t).
    AlignUniform,
    /// SimCSE's in-batch contrastive loss (temperature τ).
    Infonce,
    /// Both.
    Combined,
}

#[derive(Args, Debug, Clone)]
pub struct FitArgs {
    /// Base model: a folder or a Hub id.
    #[arg(long)]
    pub model: String,
    /// Corpus: a file or a folder of .txt (one sentence per line), .jsonl, .csv, .tsv, .parquet, .arrow files.
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder for the fine-tuned model (sentence-transformers layout).
    #[arg(long)]
    pub out: PathBuf,
    /// cls, mean or max [default: the model's pooling, else cls]
    #[arg(long)]
    pub pooling: Option<Pooling>,
    /// A measured preset of loss, batch, steps, learning rate and post-hoc map (see the README): guided-center, infonce-center, infonce-whiten.
    #[arg(long, conflicts_with_all = ["loss", "w_align", "w_uniform", "w_infonce", "alpha", "t", "tau", "lr", "batch_size", "mini_batch", "steps", "epochs", "guide", "w_guide", "center_batch"])]
    pub recipe: Option<String>,
    #[arg(long, value_enum, default_value = "align-uniform")]
    pub loss: LossKind,
    #[arg(long, default_value_t = 1.0)]
    pub w_align: f64,
    #[arg(long, default_value_t = 1.0)]
    pub w_uniform: f64,
    #[arg(long, default_value_t = 1.0)]
    pub w_infonce: f64,
    /// Exponent of the alignment distance.
    #[arg(long, default_value_t = 2.0)]
    pub alpha: f64,
    /// Uniformity temperature.
    #[arg(long, default_value_t = 2.0)]
    pub t: f64,
    /// InfoNCE temperature.
    #[arg(long, default_value_t = 0.05)]
    pub tau: f64,
    /// Distil the similarities of a frozen copy of the starting model pooled this way (e.g. mean), added to --loss.
    #[arg(long)]
    pub guide: Option<Pooling>,
    /// Weight of the guide's similarity distillation [default: 1 with --guide].
    #[arg(long)]
    pub w_guide: Option<f64>,
    /// Subtract each view's batch mean before the loss (train the centred vectors; pair with a mean-removing Dense module).
    #[arg(long)]
    pub center_batch: bool,
    #[arg(long, default_value_t = 3e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Share of the steps spent on linear warm-up.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,
    /// Clip the global gradient norm (0 turns clipping off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Gradient caching: encode the batch's 2 × B rows in chunks of this many (same gradients, memory of a chunk).
    #[arg(long)]
    pub mini_batch: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub max_len: usize,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Train this many steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// STS file to evaluate on while training; the best checkpoint by Spearman is kept.
    #[arg(long)]
    pub eval_sts: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 100)]
    pub save_every: usize,
    /// Write a train_log.jsonl record every N steps.
    #[arg(long, default_value_t = 1)]
    pub log_every: usize,
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// Continue the run whose checkpoints are in --out.
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing --out.
    #[arg(long)]
    pub overwrite: bool,
    /// auto, cpu, cuda, cuda:N or metal
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Compute precision: f32, bf16 or f16 (bf16/f16: mixed precision, with f32 master weights and optimizer state; the saved model is f32)
    #[arg(long, default_value = "f32", value_parser = crate::device::parse_dtype)]
    pub dtype: DType,
}

/// How a corpus is read and split (`fit`, `whiten`).
#[derive(Args, Debug, Clone)]
pub struct CorpusArgs {
    /// Text column of tabular files.
    #[arg(long, default_value = "text")]
    pub column: String,
    /// Keep sentences with at least this many words.
    #[arg(long)]
    pub min_words: Option<usize>,
    /// Keep sentences with at most this many words.
    #[arg(long)]
    pub max_words: Option<usize>,
    /// Keep duplicate sentences.
    #[arg(long)]
    pub no_dedup: bool,
    /// Use at most N sentences.
    #[arg(long)]
    pub max_samples: Option<usize>,
    /// Sentences held back for evaluation.
    #[arg(long, default_value_t = 1000)]
    pub holdout: usize,
    /// Sentences in the shuffle buffer.
    #[arg(long, default_value_t = 100_000)]
    pub shuffle_buffer: usize,
}

impl CorpusArgs {
    pub fn options(&self, seed: u64) -> CorpusOptions {
        CorpusOptions {
            column: self.column.clone(),
            min_words: self.min_words,
            max_words: self.max_words,
            dedup: !self.no_dedup,
            max_samples: self.max_samples,
            shuffle_buffer: self.shuffle_buffer,
            holdout: self.holdout,
            seed,
        }
    }
}

/// `fit`'s flags alone, for parsing them outside the binary.
#[derive(Parser)]
#[command(name = "fit", no_binary_name = true)]
struct FitCommand {
    #[command(flatten)]
    args: FitArgs,
}

impl FitArgs {
    /// Parses `fit`'s flags (`["--model", "M", "--lr", "1e-4", "--no-dedup"]`);
    /// a usage error is [`Error::Invalid`] on one line.
    pub fn parse_flags<I, S>(flags: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        FitCommand::try_parse_from(flags)
            .map(|c| c.args)
            .map_err(|e| Error::Invalid(usage_line(&e)))
    }

    /// The job these flags describe (a recipe applied), and the line that
    /// names the recipe, when one is used.
    pub fn job(&self) -> Result<(FitJob, Option<String>)> {
        let mut job = FitJob {
            model: self.model.clone(),
            data: self.data.clone(),
            out: self.out.clone(),
            corpus: self.corpus.options(self.seed),
            train: TrainConfig {
                loss: self.loss(),
                lr: self.lr,
                adamw: AdamWParams {
                    weight_decay: self.weight_decay,
                    ..AdamWParams::default()
                },
                warmup_ratio: self.warmup_ratio,
                max_grad_norm: (self.max_grad_norm != 0.0).then_some(self.max_grad_norm),
                batch_size: self.batch_size,
                mini_batch: self.mini_batch,
                epochs: self.epochs,
                steps: self.steps,
                seed: self.seed,
                eval_every: self.eval_every,
                save_every: self.save_every,
                log_every: self.log_every,
                guide: self.guide,
                ..TrainConfig::default()
            },
            pooling: self.pooling,
            max_len: self.max_len,
            device: self.device,
            dtype: self.dtype,
            eval_sts: self.eval_sts.clone(),
            resume: self.resume,
            overwrite: self.overwrite,
            post: None,
        };
        let Some(name) = &self.recipe else {
            return Ok((job, None));
        };
        let r = recipes::recipe(name)?;
        job.train.loss = r.loss;
        job.train.lr = r.lr;
        job.train.batch_size = r.batch_size;
        job.train.mini_batch = r.mini_batch;
        job.train.steps = Some(r.steps);
        job.train.guide = r.guide;
        job.post = r.post.map(|method| PostMap {
            method,
            samples: r.post_samples,
        });
        Ok((job, Some(format!("recipe {}: {}", r.name, r.summary))))
    }

    fn loss(&self) -> LossConfig {
        let base = LossConfig {
            alpha: self.alpha,
            t: self.t,
            tau: self.tau,
            w_guide: self
                .w_guide
                .unwrap_or(if self.guide.is_some() { 1.0 } else { 0.0 }),
            center: self.center_batch,
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

/// A clap usage error on one line: its message without the usage block and
/// tips that follow the first blank line.
pub fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let head: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    head.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whiten::Method;

    fn flags(extra: &[&str]) -> Result<FitArgs> {
        let mut f = vec!["--model", "m", "--data", "d", "--out", "o"];
        f.extend_from_slice(extra);
        FitArgs::parse_flags(f)
    }

    #[test]
    fn guided_center_sets_the_guide_the_centring_and_the_map() {
        let (job, line) = flags(&["--recipe", "guided-center"])
            .unwrap()
            .job()
            .unwrap();
        let t = &job.train;
        assert_eq!(t.guide, Some(Pooling::Mean));
        assert!(t.loss.center && t.loss.w_guide == 1.0 && t.loss.w_info_nce == 1.0);
        assert_eq!(t.loss.w_align + t.loss.w_uniform, 0.0);
        assert_eq!((t.batch_size, t.steps, t.lr), (64, Some(100), 3e-5));
        let post = job.post.unwrap();
        assert_eq!(post.method, Method::Abtt { remove: 0 });
        assert!(line.unwrap().starts_with("recipe guided-center"));
        t.validate().unwrap();
    }

    #[test]
    fn guide_flags_default_and_conflict() {
        let (job, _) = flags(&["--loss", "infonce", "--guide", "mean", "--center-batch"])
            .unwrap()
            .job()
            .unwrap();
        assert_eq!(job.train.loss.w_guide, 1.0);
        assert!(job.train.loss.center);
        let (job, _) = flags(&["--loss", "infonce"]).unwrap().job().unwrap();
        assert_eq!((job.train.guide, job.train.loss.w_guide), (None, 0.0));
        let err = flags(&["--recipe", "guided-center", "--guide", "max"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--guide") && !err.contains('\n'), "{err}");
    }
}
