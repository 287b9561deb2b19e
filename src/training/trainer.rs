//! The training loop: dropout views → loss → backward → clip → AdamW, with
//! evaluation, logging and checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::inference::Embedder;
use crate::layers::DropoutSeed;
use crate::losses::{self, LossConfig};
use crate::metrics;
use crate::pooling::Pooling;
use crate::rng::Rng;
use crate::sts::{self, StsPair};
use crate::tokenize::Encoded;
use crate::training::checkpoint::{self, TrainState};
use crate::training::data::{Corpus, EpochStream};
use crate::training::forward::{self, GraphSplit};
use crate::training::gradcache;
use crate::training::optim::{AdamW, AdamWParams, clip_scale, linear_schedule};

/// Hyper-parameters of a run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    pub loss: LossConfig,
    pub lr: f64,
    pub adamw: AdamWParams,
    /// Share of the steps spent warming the learning rate up.
    pub warmup_ratio: f64,
    pub max_grad_norm: Option<f64>,
    pub batch_size: usize,
    /// Gradient caching: encode the batch's 2B rows in chunks of this many
    /// (same gradients as the whole batch, memory bounded by the chunk).
    pub mini_batch: Option<usize>,
    pub epochs: usize,
    /// Overrides `epochs` when set.
    pub steps: Option<usize>,
    pub seed: u64,
    pub eval_every: usize,
    pub save_every: usize,
    pub log_every: usize,
    /// Held-back sentences used for alignment/uniformity while training.
    pub eval_holdout: usize,
    /// The pooling of the frozen starting model whose similarities the
    /// loss's `w_guide` term distils (`--guide`).
    pub guide: Option<Pooling>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            loss: LossConfig::align_uniform(),
            lr: 3e-5,
            adamw: AdamWParams::default(),
            warmup_ratio: 0.1,
            max_grad_norm: Some(1.0),
            batch_size: 64,
            mini_batch: None,
            epochs: 1,
            steps: None,
            seed: 42,
            eval_every: 50,
            save_every: 100,
            log_every: 1,
            eval_holdout: 500,
            guide: None,
        }
    }
}

impl TrainConfig {
    /// Checks every setting before any work; errors name the option.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size < 2 {
            return Err(Error::setting(
                "--batch-size",
                self.batch_size,
                "too small: uniformity and InfoNCE need at least 2 sentences per batch",
            ));
        }
        if self.mini_batch == Some(0) {
            return Err(Error::setting("--mini-batch", 0, "must be at least 1"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::setting(
                "--lr",
                self.lr,
                "the learning rate must be a positive number",
            ));
        }
        let wd = self.adamw.weight_decay;
        if !(wd >= 0.0 && wd.is_finite()) {
            return Err(Error::setting(
                "--weight-decay",
                wd,
                "must be a finite number ≥ 0",
            ));
        }
        for (name, beta) in [("beta1", self.adamw.beta1), ("beta2", self.adamw.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::setting(
                    name,
                    beta,
                    "AdamW's betas must be in [0, 1)",
                ));
            }
        }
        if !(self.adamw.eps > 0.0 && self.adamw.eps.is_finite()) {
            return Err(Error::setting("eps", self.adamw.eps, "must be positive"));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(Error::setting(
                "--warmup-ratio",
                self.warmup_ratio,
                "must be in [0, 1)",
            ));
        }
        if let Some(n) = self.max_grad_norm
            && !(n > 0.0 && n.is_finite())
        {
            return Err(Error::setting(
                "--max-grad-norm",
                n,
                "must be a positive number (0 turns clipping off)",
            ));
        }
        match self.steps {
            Some(0) => return Err(Error::setting("--steps", 0, "nothing to train")),
            None if self.epochs == 0 => {
                return Err(Error::setting("--epochs", 0, "nothing to train"));
            }
            _ => {}
        }
        match (self.guide, self.loss.w_guide != 0.0) {
            (Some(p), false) => Err(Error::setting(
                "--guide",
                p,
                "is given a weight of 0 (--w-guide): give it a positive weight or leave --guide out",
            )),
            (None, true) => Err(Error::setting(
                "--w-guide",
                self.loss.w_guide,
                "needs a guide: give --guide mean (or another pooling)",
            )),
            _ => self.loss.validate(),
        }
    }

    /// Optimizer steps of the run on `train_len` sentences: `steps`, else
    /// `epochs` times the steps of one epoch.
    pub fn total_steps(&self, train_len: usize) -> Result<usize> {
        if let Some(steps) = self.steps {
            return Ok(steps);
        }
        let per_epoch = steps_per_epoch(train_len, self.batch_size);
        self.epochs.checked_mul(per_epoch).ok_or_else(|| {
            Error::setting(
                "--epochs",
                self.epochs,
                format!("too many: {per_epoch} steps per epoch overflow the step counter"),
            )
        })
    }

    /// Everything that changes the result of a run, by option name, in the
    /// order a mismatch is reported: a resumed run must match all of it.
    fn settings(
        &self,
        embedder: &Embedder,
        corpus: &Corpus,
        sts: Option<&[StsPair]>,
    ) -> Vec<(&'static str, String)> {
        let opt = |v: Option<usize>| v.map_or("none".to_string(), |v| v.to_string());
        let c = corpus.options();
        let l = &self.loss;
        let mut s = vec![
            ("--model", embedder.files().name.clone()),
            ("--pooling", embedder.pooling().to_string()),
            ("--max-len", embedder.max_len().to_string()),
            ("--dtype", embedder.dtype().as_str().to_string()),
            ("--data", corpus.source().display().to_string()),
            ("--column", c.column.clone()),
            ("--min-words", opt(c.min_words)),
            ("--max-words", opt(c.max_words)),
            ("--no-dedup", (!c.dedup).to_string()),
            ("--max-samples", opt(c.max_samples)),
            ("--holdout", c.holdout.to_string()),
            ("--shuffle-buffer", c.shuffle_buffer.to_string()),
            ("training sentences", corpus.train_len.to_string()),
            ("--seed", self.seed.to_string()),
            ("--batch-size", self.batch_size.to_string()),
            ("--epochs", self.epochs.to_string()),
            ("--steps", opt(self.steps)),
            ("--lr", self.lr.to_string()),
            ("--weight-decay", self.adamw.weight_decay.to_string()),
            ("adamw", format!("{:?}", self.adamw)),
            ("--warmup-ratio", self.warmup_ratio.to_string()),
            (
                "--max-grad-norm",
                self.max_grad_norm.map_or("off".into(), |n| n.to_string()),
            ),
            ("--w-align", l.w_align.to_string()),
            ("--w-uniform", l.w_uniform.to_string()),
            ("--w-infonce", l.w_info_nce.to_string()),
            ("--alpha", l.alpha.to_string()),
            ("--t", l.t.to_string()),
            ("--tau", l.tau.to_string()),
        ];
        if let Some(p) = self.guide {
            s.push(("--guide", p.to_string()));
            s.push(("--w-guide", l.w_guide.to_string()));
        }
        if l.center {
            s.push(("--center-batch", "true".into()));
        }
        if let Some(pairs) = sts {
            s.push(("--eval-sts pairs", pairs.len().to_string()));
            s.push(("--eval-every", self.eval_every.to_string()));
        }
        s
    }
}

/// Evaluation figures at a step.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRecord {
    /// On held-back sentences: two dropout views (α = 2) and eval-mode t = 2.
    pub heldout_alignment: f64,
    pub heldout_uniformity: f64,
    pub sts_spearman: Option<f64>,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: u64,
    pub loss: f64,
    pub align: f64,
    pub uniform: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info_nce: Option<f64>,
    /// The guide's distillation term, when the loss has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guide: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub sentences_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalRecord>,
}

/// Hooks for progress display, interruption and fault injection.
pub trait Observer {
    fn on_start(&mut self, _start_step: usize, _total_steps: usize) {}
    fn on_step(&mut self, _record: &StepRecord) {}
    fn on_message(&mut self, _message: &str) {}
    /// Polled after every step; `true` checkpoints and stops.
    fn should_stop(&self) -> bool {
        false
    }
    /// Sees the loss before backward (for experiments and fault injection).
    fn adjust_loss(&mut self, _step: usize, loss: Tensor) -> Result<Tensor> {
        Ok(loss)
    }
}

/// An observer that does nothing.
pub struct Quiet;
impl Observer for Quiet {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Stopped on request after a checkpoint at this step.
    Interrupted {
        step: usize,
    },
}

pub struct Trainer<'a> {
    embedder: &'a Embedder,
    /// The frozen model whose similarities `w_guide` distils (`fit --guide`).
    guide: Option<&'a Embedder>,
    corpus: &'a Corpus,
    cfg: TrainConfig,
    out: PathBuf,
    optim: AdamW,
    state: TrainState,
    total_steps: usize,
    warmup_steps: usize,
    sts: Option<Vec<StsPair>>,
    log: std::fs::File,
}

impl<'a> Trainer<'a> {
    /// `embedder` must be a trainable load. With `resume`, continues from the
    /// newest checkpoint under `out` (which must exist).
    pub fn new(
        embedder: &'a Embedder,
        corpus: &'a Corpus,
        cfg: TrainConfig,
        out: &Path,
        sts: Option<Vec<StsPair>>,
        resume: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let vars = embedder.model().weights.vars();
        if vars.is_empty() {
            return Err(Error::Invalid(
                "the model was loaded for inference; load it with `trainable: true`".into(),
            ));
        }
        let mut optim = AdamW::for_weights(&embedder.model().weights, cfg.adamw)?;
        let settings = cfg.settings(embedder, corpus, sts.as_deref());
        let state = if resume {
            let ckpt = checkpoint::latest(out)?.ok_or_else(|| {
                Error::Invalid(format!(
                    "--resume: no checkpoint in {}",
                    checkpoint::checkpoints_dir(out).display()
                ))
            })?;
            crate::output::resume::check_settings(
                &ckpt.state.settings,
                &settings,
                "start again with --overwrite",
            )?;
            load_weights(&vars, &ckpt.model_path(), embedder)?;
            optim.load(
                &ckpt.optimizer_path(),
                ckpt.state.step as u64,
                embedder.device(),
            )?;
            ckpt.state
        } else {
            TrainState {
                step: 0,
                epoch: 0,
                consumed: 0,
                dropout_rng: Rng::new(cfg.seed),
                best_spearman: None,
                best_step: None,
                settings: settings
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }
        };
        let total_steps = cfg.total_steps(corpus.train_len)?;
        let warmup_steps = (total_steps as f64 * cfg.warmup_ratio).round() as usize;
        let log = open_log(out, state.step, resume)?;
        Ok(Trainer {
            embedder,
            guide: None,
            corpus,
            cfg,
            out: out.to_path_buf(),
            optim,
            state,
            total_steps,
            warmup_steps,
            sts,
            log,
        })
    }

    /// Distils `guide`'s similarities (the loss's `w_guide` term): a frozen
    /// model that embeds each batch's sentences in eval mode.
    pub fn with_guide(mut self, guide: &'a Embedder) -> Self {
        self.guide = Some(guide);
        self
    }

    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Trains until `total_steps`, or until the observer asks to stop.
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<Outcome> {
        obs.on_start(self.state.step, self.total_steps);
        let corpus = self.corpus;
        let mut stream = corpus.epoch(self.state.epoch);
        for _ in 0..self.state.consumed {
            stream.next().transpose()?;
        }
        while self.state.step < self.total_steps {
            let texts = self.next_batch(&mut stream)?;
            let started = Instant::now();
            let mut record = self.train_step(&texts, obs)?;
            record.sentences_per_s = texts.len() as f64 / started.elapsed().as_secs_f64();
            let step = self.state.step;
            let last = step == self.total_steps;
            if self.cfg.eval_every > 0 && (step.is_multiple_of(self.cfg.eval_every) || last) {
                record.eval = Some(self.evaluate()?);
            }
            if record.eval.is_some() || step.is_multiple_of(self.cfg.log_every.max(1)) || last {
                self.log_record(&record)?;
            }
            obs.on_step(&record);
            let stop = obs.should_stop();
            if (self.cfg.save_every > 0 && step.is_multiple_of(self.cfg.save_every)) || stop || last
            {
                self.checkpoint()?;
            }
            if stop && !last {
                return Ok(Outcome::Interrupted { step });
            }
        }
        Ok(Outcome::Completed)
    }

    /// The next batch, moving to the next epoch when this one runs out.
    fn next_batch(&mut self, stream: &mut EpochStream<'a>) -> Result<Vec<String>> {
        // A whole epoch without a pair means the corpus changed under us
        // (it was counted with at least 2 sentences): fail, never spin.
        let mut epochs_without_a_batch = 0;
        loop {
            let mut texts = Vec::with_capacity(self.cfg.batch_size);
            while texts.len() < self.cfg.batch_size {
                match stream.next() {
                    Some(t) => texts.push(t?),
                    None => break,
                }
            }
            self.state.consumed += texts.len();
            let exhausted =
                texts.len() < self.cfg.batch_size || self.state.consumed >= self.corpus.train_len;
            if exhausted {
                self.state.epoch += 1;
                self.state.consumed = 0;
                *stream = self.corpus.epoch(self.state.epoch);
            }
            // A lone sentence at the end of an epoch cannot form pairs.
            if texts.len() >= 2 {
                return Ok(texts);
            }
            epochs_without_a_batch += 1;
            if epochs_without_a_batch > 1 {
                return Err(Error::data(
                    self.corpus.source(),
                    "an epoch yielded fewer than 2 training sentences (did the files change during training?)",
                ));
            }
        }
    }

    fn train_step(&mut self, texts: &[String], obs: &mut dyn Observer) -> Result<StepRecord> {
        let next = self.state.step + 1;
        let lr = linear_schedule(
            self.state.step,
            self.warmup_steps,
            self.total_steps,
            self.cfg.lr,
        );
        let out = &self.out;
        let dropout = DropoutSeed::draw(&mut self.state.dropout_rng);
        let adjust = &mut |loss| obs.adjust_loss(next, loss);
        let (e, cfg) = (self.embedder, &self.cfg);
        let guide = guide_vectors(self.guide, texts, e.device())?;
        let loss = Objective {
            cfg: &cfg.loss,
            guide: guide.as_ref(),
        };
        let r = match cfg.mini_batch {
            Some(m) => gradcache::cached_gradients(e, dropout, texts, &loss, m, adjust),
            None => gradients(e, dropout, texts, &loss, adjust),
        }
        .and_then(|g| apply_gradients(&mut self.optim, g, lr, cfg.max_grad_norm))
        .map_err(|e| match e {
            Error::NonFiniteLoss(loss) => {
                let kept = match checkpoint::latest(out) {
                    Ok(Some(c)) => format!(
                        "the last good checkpoint (step {}) is intact in {}",
                        c.state.step,
                        c.dir.display()
                    ),
                    _ => "no checkpoint had been written yet".into(),
                };
                Error::Invalid(format!(
                    "the loss became {loss} at step {next}; training stopped and {kept}. Try a lower --lr"
                ))
            }
            e => e,
        })?;
        self.state.step = next;
        Ok(StepRecord {
            step: next,
            epoch: self.state.epoch,
            loss: r.loss,
            align: r.align,
            uniform: r.uniform,
            info_nce: r.info_nce,
            guide: r.guide,
            lr,
            grad_norm: r.grad_norm,
            sentences_per_s: 0.0,
            eval: None,
        })
    }

    /// Held-back alignment/uniformity, STS when given; keeps the best
    /// weights by Spearman. Leaves the dropout RNG as it found it.
    fn evaluate(&mut self) -> Result<EvalRecord> {
        let e = self.embedder;
        let held: Vec<String> = self
            .corpus
            .held_out
            .iter()
            .take(self.cfg.eval_holdout)
            .cloned()
            .collect();
        let (mut alignment, mut uniformity) = (f64::NAN, f64::NAN);
        if held.len() >= 2 {
            let emb = e.embed_batches(&held, None, false, &mut |_, _| Ok(()))?;
            uniformity = metrics::pair_stats(&emb, 2.0, 10, self.cfg.seed)?.uniformity;
            alignment = crate::diagnose::dropout_alignment(e, &held, self.cfg.seed)?;
        }
        let sts_spearman = match &self.sts {
            Some(pairs) => Some(sts::evaluate(e, pairs)?.spearman),
            None => None,
        };
        if let Some(s) = sts_spearman
            && self.state.best_spearman.is_none_or(|b| s > b)
        {
            self.state.best_spearman = Some(s);
            self.state.best_step = Some(self.state.step);
            let path = checkpoint::best_model_path(&self.out);
            std::fs::create_dir_all(path.parent().expect("has parent"))
                .map_err(|err| Error::io(&path, err))?;
            crate::output::model_folder::save_safetensors(&path, &self.canonical_weights()?)?;
        }
        Ok(EvalRecord {
            heldout_alignment: alignment,
            heldout_uniformity: uniformity,
            sts_spearman,
        })
    }

    /// Current weights under canonical names (checkpoint form).
    fn canonical_weights(&self) -> Result<std::collections::BTreeMap<String, Tensor>> {
        let vars = self.embedder.model().weights.vars();
        Ok(vars
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect())
    }

    fn checkpoint(&mut self) -> Result<()> {
        let weights = self.canonical_weights()?;
        let optim = &self.optim;
        checkpoint::save(&self.out, &self.state, &weights, |p| optim.save(p))?;
        Ok(())
    }

    fn log_record(&mut self, record: &StepRecord) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|e| Error::Invalid(e.to_string()))?;
        writeln!(self.log, "{line}").map_err(|e| Error::io(self.out.join(LOG), e))
    }

    /// Loads the best weights (by STS Spearman), when an evaluation kept
    /// some; returns their step.
    pub fn restore_best(&self) -> Result<Option<usize>> {
        let path = checkpoint::best_model_path(&self.out);
        match self.state.best_step {
            Some(step) if path.is_file() => {
                let vars = self.embedder.model().weights.vars();
                load_weights(&vars, &path, self.embedder)?;
                Ok(Some(step))
            }
            _ => Ok(None),
        }
    }
}

/// The figures of one optimisation step.
#[derive(Debug, Clone, Copy)]
pub struct StepResult {
    pub loss: f64,
    pub align: f64,
    pub uniform: f64,
    pub info_nce: Option<f64>,
    pub guide: Option<f64>,
    pub grad_norm: f64,
}

/// One optimisation step on `texts`: both dropout views in one forward of
/// 2B rows (masks from `dropout`, rows numbered 0..2B), the loss, backward, clipping and an
/// AdamW update at `lr`. `adjust` sees the loss before backward. A
/// non-finite loss returns [`Error::NonFiniteLoss`] before any weight
/// changes.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    embedder: &Embedder,
    optim: &mut AdamW,
    dropout: DropoutSeed,
    texts: &[String],
    loss: &Objective,
    lr: f64,
    max_grad_norm: Option<f64>,
    adjust: &mut dyn FnMut(Tensor) -> Result<Tensor>,
) -> Result<StepResult> {
    let g = gradients(embedder, dropout, texts, loss, adjust)?;
    apply_gradients(optim, g, lr, max_grad_norm)
}

/// The loss of one step and the gradient of every weight, before any
/// update.
pub struct StepGradients {
    pub grads: GradStore,
    pub loss: f64,
    pub align: f64,
    pub uniform: f64,
    pub info_nce: Option<f64>,
    pub guide: Option<f64>,
}

/// What a step minimises: the loss settings and, when they weigh a guide,
/// the guide's vectors of the step's sentences.
#[derive(Clone, Copy)]
pub struct Objective<'a> {
    pub cfg: &'a LossConfig,
    pub guide: Option<&'a Tensor>,
}

impl<'a> From<&'a LossConfig> for Objective<'a> {
    fn from(cfg: &'a LossConfig) -> Self {
        Objective { cfg, guide: None }
    }
}

/// The frozen guide's (eval-mode) vectors of `texts`, `(B, d)`.
pub fn guide_vectors(
    guide: Option<&Embedder>,
    texts: &[String],
    device: &candle_core::Device,
) -> Result<Option<Tensor>> {
    let Some(g) = guide else { return Ok(None) };
    let e = g.embed_all(texts, &mut |_| {})?;
    Ok(Some(Tensor::from_vec(
        e.data,
        (texts.len(), e.dim),
        device,
    )?))
}

/// The gradients of [`train_step`]'s loss: both views in one forward
/// ([`forward::train_forward`], the graph route split by length as
/// [`GraphSplit::for_device`] says) and one backward.
pub fn gradients(
    embedder: &Embedder,
    dropout: DropoutSeed,
    texts: &[String],
    loss: &Objective,
    adjust: &mut dyn FnMut(Tensor) -> Result<Tensor>,
) -> Result<StepGradients> {
    gradients_split(
        embedder,
        dropout,
        texts,
        loss,
        GraphSplit::for_device(embedder.device()),
        adjust,
    )
}

/// [`gradients`] with the graph route's rows split as `split` says.
pub fn gradients_split(
    embedder: &Embedder,
    dropout: DropoutSeed,
    texts: &[String],
    loss: &Objective,
    split: GraphSplit,
    adjust: &mut dyn FnMut(Tensor) -> Result<Tensor>,
) -> Result<StepGradients> {
    let rows = both_views(embedder, texts)?;
    let indices: Vec<usize> = (0..rows.len()).collect();
    let (grads, mut g) =
        backward_through_encoder(embedder, &rows, &indices, dropout, split, |pooled| {
            loss_and_parts(pooled, loss, adjust).map(|(g, total)| (total, g))
        })?;
    g.grads = grads;
    Ok(g)
}

/// Encodes rows `indices` of `rows` in train mode with `dropout`, pools,
/// and back-propagates the scalar `loss` returns for the pooled rows (in
/// the order of `indices`) into every weight. Also returns what `loss`
/// returns beside its scalar.
pub(crate) fn backward_through_encoder<T>(
    embedder: &Embedder,
    rows: &[Encoded],
    indices: &[usize],
    dropout: DropoutSeed,
    split: GraphSplit,
    loss: impl FnOnce(&Tensor) -> Result<(Tensor, T)>,
) -> Result<(GradStore, T)> {
    let pass = forward::train_forward(embedder, rows, indices, dropout, split)?;
    let (total, extra) = loss(&pass.pooled)?;
    Ok((pass.backward(&total)?, extra))
}

/// Sentences `0..B` then the same sentences again as rows `B..2B`: the two
/// dropout views.
pub(crate) fn both_views(embedder: &Embedder, texts: &[String]) -> Result<Vec<Encoded>> {
    let encoded = embedder.tokenizer().encode_all(texts)?;
    Ok(encoded.iter().chain(&encoded).cloned().collect())
}

/// The loss on the pooled rows of both views (`(2B, d)`), after `adjust`;
/// the gradients are left empty. A non-finite loss is an error.
pub(crate) fn loss_and_parts(
    pooled: &Tensor,
    loss: &Objective,
    adjust: &mut dyn FnMut(Tensor) -> Result<Tensor>,
) -> Result<(StepGradients, Tensor)> {
    let b = pooled.dim(0)? / 2;
    let (x, y) = (pooled.narrow(0, 0, b)?, pooled.narrow(0, b, b)?);
    let parts = losses::combined(&x, &y, loss.guide, loss.cfg)?;
    let total = adjust(parts.total)?;
    let loss = scalar(&total)?;
    if !loss.is_finite() {
        return Err(Error::NonFiniteLoss(loss));
    }
    let g = StepGradients {
        grads: GradStore::default(),
        loss,
        align: scalar(&parts.align)?,
        uniform: scalar(&parts.uniform)?,
        info_nce: parts.info_nce.as_ref().map(scalar).transpose()?,
        guide: parts.guide.as_ref().map(scalar).transpose()?,
    };
    Ok((g, total))
}

/// Clipping and an AdamW update at `lr` with the gradients of one step.
pub fn apply_gradients(
    optim: &mut AdamW,
    g: StepGradients,
    lr: f64,
    max_grad_norm: Option<f64>,
) -> Result<StepResult> {
    let grad_norm = optim.grad_norm(&g.grads)?;
    optim.step(&g.grads, lr, clip_scale(grad_norm, max_grad_norm))?;
    Ok(StepResult {
        loss: g.loss,
        align: g.align,
        uniform: g.uniform,
        info_nce: g.info_nce,
        guide: g.guide,
        grad_norm,
    })
}

const LOG: &str = "train_log.jsonl";

/// The log file: fresh for a new run; on resume, records after the
/// checkpoint are dropped (they will be written again).
fn open_log(out: &Path, step: usize, resume: bool) -> Result<std::fs::File> {
    let path = out.join(LOG);
    let kept = if resume && path.is_file() {
        std::fs::read_to_string(&path)
            .map_err(|e| Error::io(&path, e))?
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s as usize <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    } else {
        String::new()
    };
    std::fs::write(&path, kept).map_err(|e| Error::io(&path, e))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))
}

fn load_weights(
    vars: &std::collections::HashMap<String, candle_core::Var>,
    path: &Path,
    embedder: &Embedder,
) -> Result<()> {
    let saved = candle_core::safetensors::load(path, embedder.device())
        .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    for (name, var) in vars {
        let t = saved
            .get(name)
            .ok_or_else(|| Error::Weight(format!("{} has no weight `{name}`", path.display())))?;
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    embedder.model().weights.refresh_compute_copies()
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Optimizer steps in one epoch of `n` sentences (a final lone sentence is
/// dropped: it cannot form pairs).
pub fn steps_per_epoch(n: usize, batch: usize) -> usize {
    let full = n / batch;
    if n % batch >= 2 {
        full + 1
    } else {
        full.max(1)
    }
}
