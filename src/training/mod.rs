//! `fit`: unsupervised fine-tuning with alignment + uniformity (or InfoNCE)
//! on dropout positive pairs.
//!
//! `data` streams the corpus, `forward` encodes a step's rows in train
//! mode, `optim` is AdamW with clipping and schedule,
//! `checkpoint` saves and resumes, `trainer` runs the loop; [`fit`] ties
//! them together with the before/after diagnosis and the saved model.

pub mod args;
pub mod checkpoint;
pub mod data;
pub mod forward;
pub mod gradcache;
pub mod optim;
pub mod recipes;
pub mod trainer;

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::DType;
use serde::Serialize;

pub use data::{Corpus, CorpusOptions};
pub use trainer::{EvalRecord, Observer, Outcome, Quiet, StepRecord, TrainConfig, Trainer};

use crate::device::DeviceSpec;
use crate::diagnose::{self, DiagnoseOptions, Diagnosis};
use crate::error::{Error, Result};
use crate::inference::{Embedder, EmbedderOptions};
use crate::output::AtomicFile;
use crate::output::lock::{self, LOCK};
use crate::output::model_folder::{ModelFolder, check_pooling};
use crate::pooling::Pooling;
use crate::report::card;
use crate::sts::{self, StsResult};
use crate::whiten::{self, Method};

/// Everything `embedtune fit` needs.
#[derive(Debug, Clone)]
pub struct FitJob {
    pub model: String,
    pub data: PathBuf,
    pub out: PathBuf,
    pub corpus: CorpusOptions,
    pub train: TrainConfig,
    /// Default: the model's pooling, else `cls`.
    pub pooling: Option<Pooling>,
    pub max_len: usize,
    pub device: DeviceSpec,
    /// What the encoder computes in; bf16/f16 keep f32 master weights and
    /// optimizer state (mixed precision).
    pub dtype: DType,
    pub eval_sts: Option<PathBuf>,
    pub resume: bool,
    /// A map computed from the training sentences once training is done,
    /// saved as the model's Dense module (a recipe's last stage).
    pub post: Option<PostMap>,
    pub overwrite: bool,
}

/// What a finished run reports (`DIR/report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub base_model: String,
    pub data: PathBuf,
    pub pooling: String,
    pub max_len: usize,
    /// What the encoder computed in (`f32`, or `bf16`/`f16` with f32 master
    /// weights).
    pub dtype: String,
    pub train_sentences: usize,
    pub held_out_sentences: usize,
    pub steps: usize,
    pub config: TrainConfig,
    /// Step whose weights were saved (the best by STS when evaluated).
    pub saved_step: usize,
    pub before: Diagnosis,
    pub after: Diagnosis,
    pub sts_before: Option<StsResult>,
    pub sts_after: Option<StsResult>,
    /// Training, and the post-hoc map when there is one.
    pub train_seconds: f64,
    /// The post-hoc map, described.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
}

/// A post-hoc map (see [`crate::whiten`]) fitted after training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PostMap {
    pub method: Method,
    /// Training sentences it is computed from (at most).
    pub samples: usize,
}

pub enum FitOutcome {
    Done(Box<FitReport>),
    Interrupted { step: usize, out: PathBuf },
}

const BEFORE: &str = "before.json";

/// The output folder of a run, locked while the run lasts. The lock is
/// the OS's (`flock`), so a process that dies releases it. A folder the
/// run created is removed again if the run fails before training starts.
struct OutDir {
    path: PathBuf,
    _lock: std::fs::File,
    created: bool,
}

impl OutDir {
    /// Checks, creates and locks the output folder before any work.
    fn prepare(out: &Path, resume: bool, overwrite: bool) -> Result<Self> {
        if out.exists() && !out.is_dir() {
            return Err(Error::data(out, "exists and is not a folder"));
        }
        // A folder in use is refused as such, before anything else is said
        // about it.
        lock::check_free(out, out)?;
        let non_empty = out.is_dir()
            && std::fs::read_dir(out)
                .map_err(|e| Error::io(out, e))?
                .flatten()
                .any(|e| e.file_name() != LOCK);
        if non_empty && !resume && !overwrite {
            return Err(Error::data(
                out,
                "is not empty; pass --resume to continue a run there or --overwrite to replace it",
            ));
        }
        if resume && !checkpoint::checkpoints_dir(out).is_dir() {
            return Err(Error::data(out, "--resume: no checkpoints in this folder"));
        }
        let created = !out.exists();
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let lock = lock::lock(out, out)?;
        let dir = OutDir {
            path: out.to_path_buf(),
            _lock: lock,
            created,
        };
        checkpoint::remove_temporaries(out);
        if overwrite && !resume {
            let _ = std::fs::remove_dir_all(checkpoint::checkpoints_dir(out));
            let _ = std::fs::remove_file(out.join(BEFORE));
        }
        Ok(dir)
    }

    /// From now on the folder holds the run: keep it whatever happens.
    fn keep(&mut self) {
        self.created = false;
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `--out` must not be, contain or lie inside `--data` or `--model`.
fn check_out_is_not_an_input(job: &FitJob) -> Result<()> {
    if !job.data.to_string_lossy().starts_with("hf://") {
        crate::output::check_not_input(&job.out, "--data", &job.data)?;
    }
    let model = Path::new(&job.model);
    if model.exists() {
        crate::output::check_not_input(&job.out, "--model", model)?;
    }
    Ok(())
}

/// Fit measures the model on at least 2 held-back sentences.
fn check_held_out(job: &FitJob, corpus: &Corpus) -> Result<()> {
    if job.corpus.holdout < 2 {
        return Err(Error::setting(
            "--holdout",
            job.corpus.holdout,
            "fit needs at least 2 held-back sentences to measure the model before and after",
        ));
    }
    if corpus.held_out.len() < 2 {
        return Err(Error::data(
            &job.data,
            format!(
                "only {} distinct sentence(s) could be held back to measure the model (at most a fifth of the corpus is); fit needs at least 2: give it more distinct sentences",
                corpus.held_out.len()
            ),
        ));
    }
    Ok(())
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(text.as_bytes())
        .map_err(|e| Error::io(path, e))?;
    f.commit()
}

/// Runs a whole fine-tuning job: checks, data, before-diagnosis, training,
/// saving the model folder, after-diagnosis and the report.
pub fn fit(job: &FitJob, obs: &mut dyn Observer) -> Result<FitOutcome> {
    job.train.validate()?;
    if let Some(p) = job.pooling {
        check_pooling(p)?;
    }
    check_out_is_not_an_input(job)?;
    let sts_pairs = job.eval_sts.as_deref().map(sts::read_pairs).transpose()?;
    let corpus = Corpus::open(&job.data, job.corpus.clone())?;
    check_held_out(job, &corpus)?;
    job.train.total_steps(corpus.train_len)?;
    if corpus.skipped_invalid_utf8 > 0 {
        obs.on_message(&format!(
            "skipped {} lines that are not valid UTF-8",
            corpus.skipped_invalid_utf8
        ));
    }
    let mut out_dir = OutDir::prepare(&job.out, job.resume, job.overwrite)?;
    let mut embedder = Embedder::from_pretrained(
        &job.model,
        EmbedderOptions {
            pooling: job.pooling,
            normalize: None,
            max_len: Some(job.max_len),
            // Evaluation batches: no larger than a training chunk, so memory
            // stays bounded by --mini-batch when caching.
            batch_size: job.train.mini_batch.unwrap_or(job.train.batch_size).max(32),
            device: job.device,
            dtype: job.dtype,
            trainable: true,
        },
    )?;
    check_pooling(embedder.pooling())?;
    if job.post.is_some() && embedder.dense().is_some() {
        return Err(Error::Model {
            model: job.model.clone(),
            message: "already has a Dense module; this recipe adds its own (use the base model)"
                .into(),
        });
    }
    obs.on_message(&format!(
        "{} training sentences, {} held back; {} pooling, max length {}",
        corpus.train_len,
        corpus.held_out.len(),
        embedder.pooling(),
        embedder.max_len()
    ));

    let diag_opts = DiagnoseOptions {
        seed: job.train.seed,
        ..Default::default()
    };
    let probe = &corpus.held_out;
    let before_path = job.out.join(BEFORE);
    let (before, sts_before) = if job.resume && before_path.is_file() {
        let text = std::fs::read_to_string(&before_path).map_err(|e| Error::io(&before_path, e))?;
        serde_json::from_str::<BeforeFigures>(&text)
            .map(|b| (b.diagnosis, b.sts))
            .map_err(|e| Error::Config {
                path: before_path.clone(),
                message: e.to_string(),
            })?
    } else {
        obs.on_message("measuring the base model on the held-back sentences…");
        let d = diagnose::diagnose(&embedder, probe, &diag_opts)?;
        let s = sts_pairs
            .as_ref()
            .map(|p| sts::evaluate(&embedder, p))
            .transpose()?;
        let json = serde_json::to_string(&BeforeFiguresRef {
            diagnosis: &d,
            sts: &s,
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        write_text(&before_path, &json)?;
        (d, s)
    };

    let guide = load_guide(job, obs)?;
    let started = std::time::Instant::now();
    let mut trainer = Trainer::new(
        &embedder,
        &corpus,
        job.train.clone(),
        &job.out,
        sts_pairs.clone(),
        job.resume,
    )?;
    if let Some(g) = &guide {
        trainer = trainer.with_guide(g);
    }
    out_dir.keep();
    let steps = trainer.total_steps();
    if let Outcome::Interrupted { step } = trainer.run(obs)? {
        return Ok(FitOutcome::Interrupted {
            step,
            out: job.out.clone(),
        });
    }
    let saved_step = trainer.restore_best()?.unwrap_or(trainer.state().step);
    drop(trainer);
    let post = match &job.post {
        Some(p) => Some(fit_post_map(&mut embedder, &corpus, p, obs)?),
        None => None,
    };
    let train_seconds = started.elapsed().as_secs_f64();

    let weights = embedder.model().weights.current_tensors()?;
    ModelFolder {
        base: embedder.files(),
        weights: &weights,
        pooling: embedder.pooling(),
        normalize: embedder.normalize(),
        max_seq_length: embedder.max_len(),
        hidden_size: embedder.hidden_size(),
        dense: embedder.dense(),
    }
    .save(&job.out)?;

    obs.on_message("measuring the fine-tuned model…");
    let after = diagnose::diagnose(&embedder, probe, &diag_opts)?;
    let sts_after = sts_pairs
        .as_ref()
        .map(|p| sts::evaluate(&embedder, p))
        .transpose()?;
    let report = FitReport {
        base_model: job.model.clone(),
        data: job.data.clone(),
        pooling: embedder.pooling().to_string(),
        max_len: embedder.max_len(),
        dtype: embedder.dtype().as_str().to_string(),
        train_sentences: corpus.train_len,
        held_out_sentences: corpus.held_out.len(),
        steps,
        config: job.train.clone(),
        saved_step,
        before: before.named(&job.model),
        after: after.named(&job.out.display().to_string()),
        sts_before,
        sts_after,
        train_seconds,
        post,
    };
    card::write(
        &job.out,
        &report,
        &model_card(&report),
        &report.before,
        &report.after,
    )?;
    Ok(FitOutcome::Done(Box::new(report)))
}

/// Computes `p` from the trained embeddings of the training sentences and
/// makes it the embedder's Dense module; returns its description.
fn fit_post_map(
    embedder: &mut Embedder,
    corpus: &Corpus,
    p: &PostMap,
    obs: &mut dyn Observer,
) -> Result<String> {
    let what = p.method.describe();
    obs.on_message(&format!(
        "computing {what} from up to {} training sentences…",
        p.samples
    ));
    let moments = whiten::stream_moments(embedder, corpus, Some(p.samples), &mut whiten::Silent)?;
    embedder.set_dense(whiten::compute(&moments, p.method)?)?;
    Ok(format!("{what}, from {} training sentences", moments.n))
}

#[derive(serde::Deserialize)]
struct BeforeFigures {
    diagnosis: Diagnosis,
    sts: Option<StsResult>,
}

#[derive(Serialize)]
struct BeforeFiguresRef<'a> {
    diagnosis: &'a Diagnosis,
    sts: &'a Option<StsResult>,
}

/// A short model card for `DIR/README.md`.
fn model_card(r: &FitReport) -> String {
    let c = &r.config;
    let mut s = card::header(
        &format!("Fine-tuned {}", r.base_model),
        &format!(
            "Fine-tuned with [embedtune](https://crates.io/crates/embedtune) on unlabeled sentences: each sentence encoded twice with dropout (unsupervised SimCSE positive pairs), trained on {}.",
            loss_name(&c.loss, c.guide)
        ),
    );
    s += &format!(
        "| setting | value |\n|---|---|\n| base model | {} |\n| data | {} ({} sentences, {} held back) |\n| loss | {} |\n| pooling | {} |\n| max length | {} |\n| precision | {} |\n| batch size | {} |\n| learning rate | {} (warm-up {:.0}% then linear decay), AdamW weight decay {} |\n| gradient clipping | {} |\n| steps | {} (saved weights of step {}) |\n| seed | {} |\n| training time | {:.0} s |\n\n",
        r.base_model,
        r.data.display(),
        r.train_sentences,
        r.held_out_sentences,
        loss_terms(&c.loss, c.guide),
        r.pooling,
        r.max_len,
        precision(&r.dtype),
        c.batch_size,
        c.lr,
        c.warmup_ratio * 100.0,
        c.adamw.weight_decay,
        c.max_grad_norm
            .map_or("off".to_string(), |n| format!("global norm ≤ {n}")),
        r.steps,
        r.saved_step,
        c.seed,
        r.train_seconds
    );
    if let Some(p) = &r.post {
        s += &format!(
            "After training: {p}, saved as a `Dense` module after pooling (time included above).\n\n"
        );
    }
    s += &card::before_after(&card::BeforeAfter {
        before: &r.before,
        after: &r.after,
        sts_before: r.sts_before.as_ref(),
        sts_after: r.sts_after.as_ref(),
    });
    s += card::USAGE;
    s
}

/// The frozen copy of the starting model that `--guide` names: its
/// pooling, the run's maximum length and device, eval mode.
fn load_guide(job: &FitJob, obs: &mut dyn Observer) -> Result<Option<Embedder>> {
    let Some(pooling) = job.train.guide else {
        return Ok(None);
    };
    obs.on_message(&format!(
        "loading the guide: a frozen copy of the model with {pooling} pooling"
    ));
    let guide = Embedder::from_pretrained(
        &job.model,
        EmbedderOptions {
            pooling: Some(pooling),
            max_len: Some(job.max_len),
            batch_size: job.train.mini_batch.unwrap_or(job.train.batch_size).max(32),
            device: job.device,
            dtype: job.dtype,
            ..EmbedderOptions::default()
        },
    )?;
    Ok(Some(guide))
}

fn loss_terms(l: &crate::losses::LossConfig, guide: Option<Pooling>) -> String {
    let mut terms = Vec::new();
    if l.w_align != 0.0 {
        terms.push(format!("{} × align (α = {})", l.w_align, l.alpha));
    }
    if l.w_uniform != 0.0 {
        terms.push(format!("{} × uniform (t = {})", l.w_uniform, l.t));
    }
    if l.w_info_nce != 0.0 {
        terms.push(format!("{} × InfoNCE (τ = {})", l.w_info_nce, l.tau));
    }
    if let Some(p) = guide {
        terms.push(format!(
            "{} × distillation of the frozen base model's {p}-pooling similarities (τ = {})",
            l.w_guide, l.tau
        ));
    }
    let terms = terms.join(" + ");
    if l.center {
        format!("{terms}, on batch-centred vectors")
    } else {
        terms
    }
}

fn loss_name(l: &crate::losses::LossConfig, guide: Option<Pooling>) -> String {
    let base = match (l.w_info_nce != 0.0, l.w_align != 0.0 || l.w_uniform != 0.0) {
        (true, true) => "alignment + uniformity + InfoNCE",
        (true, false) => "InfoNCE (SimCSE)",
        _ => "alignment + uniformity (Wang & Isola, 2020)",
    };
    match guide {
        Some(p) => format!(
            "{base} with a distillation of the base model's {p}-pooling similarities (RankCSE's listwise loss)"
        ),
        None => base.to_string(),
    }
}

/// The model card's precision line.
fn precision(dtype: &str) -> String {
    match dtype {
        "f32" => "f32".to_string(),
        half => format!("{half} compute, f32 master weights and optimizer state"),
    }
}
