//! `whiten`: post-hoc maps that take the narrow cone away with no training,
//! saved as a sentence-transformers `Dense` module.
//!
//! - **Whitening** (Su et al., 2021): with μ the mean and Σ = U Λ Uᵀ the
//!   covariance of the pooled embeddings, `y = (x − μ) W`, `W = U Λ^(−1/2)`
//!   truncated to the top K columns. As a Dense layer: weight `Wᵀ` (K × d),
//!   bias `−μ W`.
//! - **All-but-the-top** (Mu & Viswanath, 2018): subtract μ, then the
//!   projections on the top D principal directions:
//!   `y = (I − U_D U_Dᵀ)(x − μ)`; weight `I − U_D U_Dᵀ`, bias `−weight·μ`.
//!
//! The corpus is streamed (the same held-back split as `fit`, so the
//! figures compare); μ and the second moment are accumulated in f64 as
//! mergeable sums, one chunk of embeddings at a time.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::dense::Dense;
use crate::device::DeviceSpec;
use crate::diagnose::{self, DiagnoseOptions, Diagnosis};
use crate::error::{Error, Result};
use crate::inference::{Embedder, EmbedderOptions};
pub use crate::metrics::Moments;
use crate::metrics::Spectrum;
use crate::output::model_folder::{ModelFolder, check_pooling, prepare_out_dir};
use crate::pooling::Pooling;
use crate::report::card::{self, BeforeAfter};
use crate::sts::{self, StsResult};
use crate::training::{Corpus, CorpusOptions};

/// Which map to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Keep the top `dim` whitened directions (default: all).
    Whitening { dim: Option<usize> },
    /// Remove the mean and the top `remove` principal directions.
    Abtt { remove: usize },
}

impl Method {
    pub fn describe(&self) -> String {
        match *self {
            Method::Whitening { dim: Some(k) } => format!("whitening to {k} dimensions"),
            Method::Whitening { dim: None } => "whitening (every direction the data spans)".into(),
            Method::Abtt { remove: 0 } => "all-but-the-top: the mean removed".into(),
            Method::Abtt { remove } => format!(
                "all-but-the-top: mean and top {remove} principal direction{} removed",
                if remove == 1 { "" } else { "s" }
            ),
        }
    }
}

/// Checks `method` against the embedding dimension `d`; returns its K or D.
pub fn check_method(method: Method, d: usize) -> Result<usize> {
    let (k, flag, least) = match method {
        Method::Whitening { dim } => (dim.unwrap_or(d), "--dim", 1),
        Method::Abtt { remove } => (remove, "--remove", 0),
    };
    if k > d || k < least {
        return Err(Error::setting(
            flag,
            k,
            format!("must be between {least} and the embedding dimension {d}"),
        ));
    }
    Ok(k)
}

/// Checks there are enough sentences: the covariance of n points has rank
/// at most n − 1, so K directions need more than K sentences.
pub fn check_sentences(method: Method, d: usize, n: u64) -> Result<()> {
    let k = check_method(method, d)?;
    if n as usize <= k {
        return Err(Error::Invalid(format!(
            "{} needs more sentences than dimensions ({k}), got {n}: the covariance is singular",
            method.describe()
        )));
    }
    Ok(())
}

/// The map of `method` for embeddings with moments `m`, as a Dense layer.
pub fn compute(m: &Moments, method: Method) -> Result<Dense> {
    let d = m.dim;
    check_sentences(method, d, m.n)?;
    let mu = m.mean();
    let spectrum = Spectrum::of_matrix(m.covariance());
    let weight = match method {
        Method::Whitening { dim } => whitening_weight(&spectrum, dim)?,
        Method::Abtt { remove } => abtt_weight(&spectrum, remove),
    };
    let rows = weight.len() / d;
    // bias = −weight · μ
    let bias: Vec<f32> = weight
        .chunks(d)
        .map(|row| -row.iter().zip(&mu).map(|(w, m)| w * m).sum::<f64>() as f32)
        .collect();
    let weight: Vec<f32> = weight.iter().map(|&w| w as f32).collect();
    Dense::linear(
        Tensor::from_vec(weight, (rows, d), &Device::Cpu)?,
        Tensor::from_vec(bias, rows, &Device::Cpu)?,
    )
}

/// Directions whose variance is below this share of the largest carry
/// only rounding (f32 embeddings: ~1e-14), not data.
const RANK_TOLERANCE: f64 = 1e-10;

/// The directions the embeddings span: eigenvalues above the tolerance.
/// LayerNorm outputs (and their CLS or mean pooling) lie in a hyperplane,
/// so a BERT model's span at most d − 1.
pub fn numerical_rank(s: &Spectrum) -> usize {
    let top = s.eigenvalues[0];
    s.eigenvalues
        .iter()
        .take_while(|&&l| top > 0.0 && l > top * RANK_TOLERANCE)
        .count()
}

/// Row `i` is `uᵢ / √λᵢ` (row-major `k × d`) for the top `k` directions,
/// or for every direction the data spans when `k` is `None`.
fn whitening_weight(s: &Spectrum, k: Option<usize>) -> Result<Vec<f64>> {
    let rank = numerical_rank(s);
    let k = k.unwrap_or(rank);
    if k > rank || k == 0 {
        return Err(Error::Invalid(format!(
            "the embeddings span only {rank} directions (the next has variance {:.3e}, {:.1e} of the largest): choose --dim {rank} or less, or more distinct sentences",
            s.eigenvalues.get(rank).copied().unwrap_or(0.0),
            s.eigenvalues.get(rank).copied().unwrap_or(0.0)
                / s.eigenvalues[0].max(f64::MIN_POSITIVE)
        )));
    }
    Ok((0..k)
        .flat_map(|i| {
            let scale = s.eigenvalues[i].sqrt();
            s.eigenvectors[i].iter().map(move |u| u / scale)
        })
        .collect())
}

/// `I − Σ_{i<D} uᵢuᵢᵀ` (row-major `d × d`).
fn abtt_weight(s: &Spectrum, remove: usize) -> Vec<f64> {
    let d = s.eigenvalues.len();
    let mut w = vec![0f64; d * d];
    for i in 0..d {
        w[i * d + i] = 1.0;
    }
    for u in &s.eigenvectors[..remove] {
        for i in 0..d {
            for j in 0..d {
                w[i * d + j] -= u[i] * u[j];
            }
        }
    }
    w
}

/// Everything `embedtune whiten` needs.
#[derive(Debug, Clone)]
pub struct WhitenJob {
    pub model: String,
    pub data: PathBuf,
    pub out: PathBuf,
    /// The same options (and held-back split) as `fit`.
    pub corpus: CorpusOptions,
    pub method: Method,
    /// Default: the model's pooling, else `cls`.
    pub pooling: Option<Pooling>,
    pub max_len: Option<usize>,
    pub batch_size: usize,
    pub device: DeviceSpec,
    pub eval_sts: Option<PathBuf>,
    pub overwrite: bool,
}

/// What `whiten` reports (`DIR/report.json`).
#[derive(Debug, Clone, Serialize)]
pub struct WhitenReport {
    pub base_model: String,
    pub data: PathBuf,
    pub method: Method,
    pub description: String,
    pub pooling: String,
    pub max_len: usize,
    /// Sentences the map was computed from.
    pub sentences: u64,
    pub held_out_sentences: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub before: Diagnosis,
    pub after: Diagnosis,
    pub sts_before: Option<StsResult>,
    pub sts_after: Option<StsResult>,
    pub seconds: f64,
}

/// Progress of a whitening job.
pub trait Progress {
    fn message(&mut self, _message: &str) {}
    /// `total` sentences to embed; called once before the first chunk.
    fn start(&mut self, _total: usize) {}
    /// Sentences embedded so far.
    fn embedded(&mut self, _done: usize) {}
}

/// Progress that shows nothing.
pub struct Silent;
impl Progress for Silent {}

/// Sentences embedded per chunk (memory: chunk × dim floats).
const CHUNK: usize = 4096;

/// Computes the map on the training split of the corpus, saves the model
/// with the map as its Dense module, and measures before and after on the
/// held-back sentences (and STS when given).
pub fn whiten(job: &WhitenJob, progress: &mut dyn Progress) -> Result<WhitenReport> {
    if let Some(p) = job.pooling {
        check_pooling(p)?;
    }
    let sts_pairs = job.eval_sts.as_deref().map(sts::read_pairs).transpose()?;
    let embedder = Embedder::from_pretrained(
        &job.model,
        EmbedderOptions {
            pooling: job.pooling,
            max_len: job.max_len,
            batch_size: job.batch_size,
            device: job.device,
            ..EmbedderOptions::default()
        },
    )?;
    if embedder.dense().is_some() {
        return Err(Error::Model {
            model: job.model.clone(),
            message: "already has a Dense module; whiten its base model instead".into(),
        });
    }
    check_pooling(embedder.pooling())?;
    if job.out.canonicalize().ok() == embedder.files().dir.canonicalize().ok() {
        return Err(Error::data(&job.out, "is the input model's folder"));
    }
    // Bad parameters fail before the long pass.
    check_method(job.method, embedder.dim())?;
    let corpus = Corpus::open(&job.data, job.corpus.clone())?;
    check_sentences(job.method, embedder.dim(), corpus.train_len as u64)?;
    prepare_out_dir(&job.out, job.overwrite)?;
    let started = std::time::Instant::now();
    progress.message(&format!(
        "{} sentences for the map, {} held back; {} pooling, max length {}",
        corpus.train_len,
        corpus.held_out.len(),
        embedder.pooling(),
        embedder.max_len()
    ));
    let moments = stream_moments(&embedder, &corpus, None, progress)?;
    let dense = compute(&moments, job.method)?;

    let measure = |e: &Embedder| -> Result<(Diagnosis, Option<StsResult>)> {
        let opts = DiagnoseOptions {
            seed: job.corpus.seed,
            ..DiagnoseOptions::default()
        };
        let d = diagnose::diagnose(e, &corpus.held_out, &opts)?;
        let s = sts_pairs
            .as_ref()
            .map(|p| sts::evaluate(e, p))
            .transpose()?;
        Ok((d, s))
    };
    progress.message("measuring before and after on the held-back sentences…");
    let (before, sts_before) = measure(&embedder)?;
    let weights = embedder.model().weights.current_tensors()?;
    ModelFolder {
        base: embedder.files(),
        weights: &weights,
        pooling: embedder.pooling(),
        normalize: embedder.normalize(),
        max_seq_length: embedder.max_len(),
        hidden_size: embedder.hidden_size(),
        dense: Some(&dense),
    }
    .save(&job.out)?;
    // Measured on the saved folder, loaded as any user would.
    let saved = Embedder::from_pretrained(
        &job.out.display().to_string(),
        EmbedderOptions {
            batch_size: job.batch_size,
            device: job.device,
            ..EmbedderOptions::default()
        },
    )?;
    let (after, sts_after) = measure(&saved)?;
    let report = WhitenReport {
        base_model: job.model.clone(),
        data: job.data.clone(),
        method: job.method,
        description: job.method.describe(),
        pooling: embedder.pooling().to_string(),
        max_len: embedder.max_len(),
        sentences: moments.n,
        held_out_sentences: corpus.held_out.len(),
        in_features: dense.in_features(),
        out_features: dense.out_features(),
        before: before.named(&job.model),
        after: after.named(&job.out.display().to_string()),
        sts_before,
        sts_after,
        seconds: started.elapsed().as_secs_f64(),
    };
    card::write(
        &job.out,
        &report,
        &whiten_card(&report),
        &report.before,
        &report.after,
    )?;
    Ok(report)
}

/// Σx and Σxxᵀ of the (unnormalised) embeddings of the training split, or
/// of its first `limit` sentences, a chunk at a time.
pub fn stream_moments(
    embedder: &Embedder,
    corpus: &Corpus,
    limit: Option<usize>,
    progress: &mut dyn Progress,
) -> Result<Moments> {
    let total = limit.map_or(corpus.train_len, |l| l.min(corpus.train_len));
    let mut moments = Moments::new(embedder.dim());
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut stream = corpus.epoch(0).take(total).peekable();
    progress.start(total);
    while stream.peek().is_some() {
        chunk.clear();
        for text in stream.by_ref().take(CHUNK) {
            chunk.push(text?);
        }
        let e = embedder.embed_batches(&chunk, None, false, &mut |_, _| Ok(()))?;
        moments.add(&e)?;
        progress.embedded(moments.n as usize);
    }
    Ok(moments)
}

fn whiten_card(r: &WhitenReport) -> String {
    let mut s = card::header(
        &format!("Whitened {}", r.base_model),
        &format!(
            "Post-processed with [embedtune](https://crates.io/crates/embedtune) `whiten`: {} of the {} pooled embeddings, computed from {} unlabeled sentences with no training, stored as a `Dense` module ({} → {} features) after pooling.",
            r.description, r.pooling, r.sentences, r.in_features, r.out_features
        ),
    );
    s += &format!(
        "| setting | value |\n|---|---|\n| base model | {} |\n| data | {} ({} sentences, {} held back) |\n| method | {} |\n| pooling | {} |\n| max length | {} |\n| time | {:.0} s |\n\n",
        r.base_model,
        r.data.display(),
        r.sentences,
        r.held_out_sentences,
        r.description,
        r.pooling,
        r.max_len,
        r.seconds
    );
    s += &card::before_after(&BeforeAfter {
        before: &r.before,
        after: &r.after,
        sts_before: r.sts_before.as_ref(),
        sts_after: r.sts_after.as_ref(),
    });
    s += card::USAGE;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::Embeddings;

    fn embeddings(rows: &[[f32; 3]]) -> Embeddings {
        Embeddings {
            dim: 3,
            data: rows.iter().flatten().copied().collect(),
        }
    }

    fn apply(dense: &Dense, e: &Embeddings) -> Vec<Vec<f32>> {
        let x = Tensor::from_slice(&e.data, (e.len(), e.dim), &Device::Cpu).unwrap();
        dense.forward(&x).unwrap().to_vec2().unwrap()
    }

    const ROWS: [[f32; 3]; 6] = [
        [1.0, 2.0, 0.5],
        [2.0, 1.0, -0.5],
        [0.0, 3.0, 1.0],
        [3.0, 0.5, 0.0],
        [1.5, 1.5, 2.0],
        [0.5, 2.5, -1.0],
    ];

    #[test]
    fn moments_merge_like_one_pass() {
        let mut all = Moments::new(3);
        all.add(&embeddings(&ROWS)).unwrap();
        let (mut a, mut b) = (Moments::new(3), Moments::new(3));
        a.add(&embeddings(&ROWS[..2])).unwrap();
        b.add(&embeddings(&ROWS[2..])).unwrap();
        a.merge(&b);
        assert_eq!(a.n, 6);
        for (x, y) in a.covariance().iter().zip(all.covariance().iter()) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    #[test]
    fn whitened_embeddings_have_zero_mean_and_identity_covariance() {
        let e = embeddings(&ROWS);
        let mut m = Moments::new(3);
        m.add(&e).unwrap();
        let dense = compute(&m, Method::Whitening { dim: None }).unwrap();
        let y: Vec<f32> = apply(&dense, &e).concat();
        let mut back = Moments::new(3);
        back.add(&Embeddings { dim: 3, data: y }).unwrap();
        for v in back.mean() {
            assert!(v.abs() < 1e-5, "mean {v}");
        }
        let cov = back.covariance();
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (cov[(i, j)] - want).abs() < 1e-4,
                    "cov {i},{j} = {}",
                    cov[(i, j)]
                );
            }
        }
        // Truncated: two output dimensions.
        let two = compute(&m, Method::Whitening { dim: Some(2) }).unwrap();
        assert_eq!(two.out_features(), 2);
    }

    #[test]
    fn abtt_removes_the_top_direction_of_the_centred_points() {
        let e = embeddings(&ROWS);
        let mut m = Moments::new(3);
        m.add(&e).unwrap();
        let dense = compute(&m, Method::Abtt { remove: 1 }).unwrap();
        let top = Spectrum::of_matrix(m.covariance()).eigenvectors[0].clone();
        let mu = m.mean();
        for (y, x) in apply(&dense, &e).iter().zip(e.rows()) {
            let along: f64 = y.iter().zip(&top).map(|(a, u)| *a as f64 * u).sum();
            assert!(along.abs() < 1e-5, "{along}");
            // What is left is the centred point minus its top component.
            let c: Vec<f64> = x.iter().zip(&mu).map(|(a, m)| *a as f64 - m).collect();
            let proj: f64 = c.iter().zip(&top).map(|(a, u)| a * u).sum();
            for i in 0..3 {
                assert!((y[i] as f64 - (c[i] - proj * top[i])).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let mut m = Moments::new(3);
        m.add(&embeddings(&ROWS[..3])).unwrap();
        let err = |method| compute(&m, method).unwrap_err().to_string();
        assert!(err(Method::Whitening { dim: Some(4) }).contains("embedding dimension 3"));
        assert!(err(Method::Abtt { remove: 4 }).contains("embedding dimension 3"));
        // Three points span two directions: full whitening needs four.
        assert!(err(Method::Whitening { dim: None }).contains("more sentences than dimensions"));
        assert!(compute(&m, Method::Whitening { dim: Some(2) }).is_ok());
    }

    #[test]
    fn whitening_keeps_the_directions_the_data_spans() {
        // Points on the plane x + y + z = 3, as LayerNorm outputs lie on one.
        let rows: Vec<[f32; 3]> = ROWS
            .iter()
            .map(|r| [r[0], r[1], 3.0 - r[0] - r[1]])
            .collect();
        let mut m = Moments::new(3);
        m.add(&embeddings(&rows)).unwrap();
        assert_eq!(
            compute(&m, Method::Whitening { dim: None })
                .unwrap()
                .out_features(),
            2
        );
        let err = compute(&m, Method::Whitening { dim: Some(3) })
            .unwrap_err()
            .to_string();
        assert!(err.contains("span only 2 directions"), "{err}");
    }
}
