//! `diagnose`: how anisotropic are a model's sentence embeddings?
//!
//! One eval pass over the probe gives the pooled embeddings (and, on the
//! way, each layer's pooled vectors and a sample of token vectors); two
//! seeded train-mode passes over a sample give the dropout alignment.
//! The pooled-vector figures go through [`stats::VectorStats`], which also
//! diagnoses saved vectors (`diagnose --embeddings`) at any scale.

pub mod stats;

use candle_core::{D, DType, Tensor};
use serde::Serialize;
use stats::{StatsOptions, VectorDiagnosis, VectorStats};

use crate::error::{Error, Result};
use crate::inference::{Embedder, Embeddings};
use crate::layers::DropoutSeed;
use crate::metrics::{self, CosineHistogram};
use crate::rng::Rng;

/// About a thousand varied English sentences written for embedtune: the
/// probe used when no data is given.
pub const DEFAULT_PROBE: &str = include_str!("../../data/probe_sentences.txt");

pub fn default_probe() -> Vec<String> {
    DEFAULT_PROBE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[derive(Debug, Clone)]
pub struct DiagnoseOptions {
    /// Use at most this many sentences (a seeded sample).
    pub max_samples: Option<usize>,
    pub seed: u64,
    /// Sentences encoded twice in train mode for `alignment`.
    pub alignment_samples: usize,
    /// Token vectors sampled for `token_avg_cosine`.
    pub token_samples: usize,
    pub histogram_bins: usize,
}

impl Default for DiagnoseOptions {
    fn default() -> Self {
        DiagnoseOptions {
            max_samples: None,
            seed: 0,
            alignment_samples: 1000,
            token_samples: 4000,
            histogram_bins: 100,
        }
    }
}

/// The figures of one model on one probe. Field names are the JSON keys.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Diagnosis {
    pub model: String,
    pub pooling: String,
    pub max_len: usize,
    /// Sentences in the probe.
    pub n: usize,
    /// Sentence pairs behind `uniformity` and the histogram.
    pub pairs: u64,
    pub pairs_exact: bool,
    /// Mean cosine over distinct pairs of the raw pooled embeddings.
    pub avg_cosine: f64,
    /// `log mean exp(−2‖uᵢ − uⱼ‖²)` on the normalised embeddings.
    pub uniformity: f64,
    /// `mean ‖x − y‖²` between two seeded dropout encodings.
    pub alignment: f64,
    pub alignment_n: usize,
    pub top1_variance_ratio: f64,
    pub effective_rank: f64,
    pub mean_vector_norm: f64,
    pub isoscore: f64,
    /// `avg_cosine` of each layer's pooled states, embeddings (0) to last.
    pub per_layer_avg_cosine: Vec<f64>,
    /// Mean cosine between random token vectors of different sentences.
    pub token_avg_cosine: f64,
    pub token_samples: usize,
    /// For the figures; not part of the JSON report.
    #[serde(skip)]
    pub histogram: CosineHistogram,
    /// Angles on S¹ of the normalised embeddings projected onto their top
    /// two (uncentered) principal directions.
    #[serde(skip)]
    pub circle_angles: Vec<f64>,
    /// `‖x − y‖` of each positive pair behind `alignment`.
    #[serde(skip)]
    pub alignment_distances: Vec<f64>,
}

impl Diagnosis {
    /// The figures of saved vectors under `name`: those that need the
    /// model (alignment, per layer, tokens) are NaN or empty, for the
    /// caller to fill in or leave out.
    pub fn of_vectors(v: VectorDiagnosis, name: &str) -> Self {
        Diagnosis {
            model: name.to_string(),
            pooling: String::new(),
            max_len: 0,
            n: v.n as usize,
            pairs: v.pairs,
            pairs_exact: v.pairs_exact,
            avg_cosine: v.avg_cosine,
            uniformity: v.uniformity,
            alignment: f64::NAN,
            alignment_n: 0,
            top1_variance_ratio: v.top1_variance_ratio,
            effective_rank: v.effective_rank,
            mean_vector_norm: v.mean_vector_norm,
            isoscore: v.isoscore,
            per_layer_avg_cosine: Vec::new(),
            token_avg_cosine: f64::NAN,
            token_samples: 0,
            histogram: v.cosine_histogram,
            circle_angles: v.circle_angles,
            alignment_distances: Vec::new(),
        }
    }

    /// The same figures under another model name.
    pub fn named(mut self, name: &str) -> Self {
        self.model = name.to_string();
        self
    }

    /// One line in plain words.
    pub fn verdict(&self) -> String {
        verdict(self.avg_cosine)
    }
}

/// One line in plain words on an average cosine `c`.
pub fn verdict(c: f64) -> String {
    if c >= 0.4 {
        format!("narrow cone: average cosine {c:.2} — embeddings occupy a small cap of the sphere")
    } else if c >= 0.15 {
        format!("anisotropic: average cosine {c:.2} — embeddings lean towards a common direction")
    } else {
        format!("well spread: average cosine {c:.2} — embeddings use the sphere broadly")
    }
}

/// Runs the probe `texts` through `embedder` and computes every figure.
pub fn diagnose(
    embedder: &Embedder,
    texts: &[String],
    opts: &DiagnoseOptions,
) -> Result<Diagnosis> {
    let mut rng = Rng::new(opts.seed);
    let texts = sample(texts, opts.max_samples, &mut rng);
    if texts.len() < 2 {
        return Err(Error::Invalid(format!(
            "diagnose needs at least 2 sentences, got {}",
            texts.len()
        )));
    }
    let pass = eval_pass(embedder, &texts, opts, &mut rng)?;
    let mut pooled = VectorStats::new(
        pass.pooled.dim,
        StatsOptions {
            seed: opts.seed,
            histogram_bins: opts.histogram_bins,
            ..StatsOptions::default()
        },
    );
    pooled.add(&pass.pooled.data)?;
    let alignment_texts = sample(&texts, Some(opts.alignment_samples), &mut rng);
    let alignment_distances = if alignment_texts.is_empty() {
        Vec::new()
    } else {
        dropout_distances(embedder, &alignment_texts, opts.seed)?
    };
    let mut d = Diagnosis::of_vectors(pooled.finish()?, &embedder.files().name);
    d.pooling = embedder.pooling().to_string();
    d.max_len = embedder.max_len();
    d.alignment = mean_square(&alignment_distances);
    d.alignment_n = alignment_distances.len();
    d.per_layer_avg_cosine = pass.per_layer_avg_cosine();
    d.token_avg_cosine = pass.tokens.avg_cosine();
    d.token_samples = pass.tokens.count();
    d.alignment_distances = alignment_distances;
    Ok(d)
}

/// Checks, before any work, that a report or statistics file can be
/// written at `path`.
pub fn check_output(path: &std::path::Path) -> Result<()> {
    crate::output::check_parent(path)?;
    if path.is_dir() {
        return Err(Error::data(path, "is a folder, expected a file name"));
    }
    Ok(())
}

fn sample(texts: &[String], max: Option<usize>, rng: &mut Rng) -> Vec<String> {
    match max {
        Some(k) if k < texts.len() => {
            let mut idx: Vec<usize> = (0..texts.len()).collect();
            rng.shuffle(&mut idx);
            idx.truncate(k);
            idx.sort_unstable();
            idx.into_iter().map(|i| texts[i].clone()).collect()
        }
        _ => texts.to_vec(),
    }
}

/// What one eval pass collects, in memory linear in the probe size.
struct EvalPass {
    pooled: Embeddings,
    /// Per layer: Σ of unit pooled vectors and Σ of their squared norms.
    layer_sums: Vec<Vec<f64>>,
    n: usize,
    tokens: TokenSample,
}

impl EvalPass {
    fn per_layer_avg_cosine(&self) -> Vec<f64> {
        let n = self.n as f64;
        self.layer_sums
            .iter()
            .map(|s| (s.iter().map(|v| v * v).sum::<f64>() - n) / (n * (n - 1.0)))
            .collect()
    }
}

fn eval_pass(
    embedder: &Embedder,
    texts: &[String],
    opts: &DiagnoseOptions,
    rng: &mut Rng,
) -> Result<EvalPass> {
    let dim = embedder.hidden_size();
    let layers = embedder.model().encoder.num_layers() + 1;
    let mut layer_sums = vec![vec![0f64; dim]; layers];
    // Each sentence contributes up to two tokens with this probability.
    let keep = (opts.token_samples as f64 / (2.0 * texts.len() as f64)).min(1.0);
    let mut tokens = TokenSample::default();
    let pooling = embedder.pooling();
    let pooled = embedder.embed_batches(texts, None, false, &mut |batch, output| {
        for (l, hidden) in output.hidden_states.iter().enumerate() {
            let unit = crate::pooling::l2_normalize(
                &pooling
                    .pool_layer(hidden, &batch.attention_mask)?
                    .to_dtype(DType::F32)?,
            )?;
            let sum: Vec<f32> = unit.sum(0)?.to_vec1()?;
            for (a, v) in layer_sums[l].iter_mut().zip(sum) {
                *a += v as f64;
            }
        }
        tokens.collect(
            output.last(),
            &batch.attention_mask,
            &batch.indices,
            keep,
            rng,
        )
    })?;
    Ok(EvalPass {
        pooled,
        layer_sums,
        n: texts.len(),
        tokens,
    })
}

/// Unit token vectors grouped by sentence, for Ethayarajh's (2019) measure.
#[derive(Default)]
struct TokenSample {
    /// Per sampled sentence: the sum of its sampled unit token vectors and
    /// how many there are.
    groups: Vec<(Vec<f64>, usize)>,
}

impl TokenSample {
    fn collect(
        &mut self,
        last: &Tensor,
        mask: &Tensor,
        indices: &[usize],
        keep: f64,
        rng: &mut Rng,
    ) -> Result<()> {
        let lengths: Vec<u32> = mask.sum(D::Minus1)?.to_vec1()?;
        let unit = crate::pooling::l2_normalize(&last.to_dtype(DType::F32)?)?;
        for (row, _) in indices.iter().enumerate() {
            // Real tokens other than [CLS] and [SEP]: positions 1..len−1.
            let len = lengths[row] as usize;
            if len < 3 || (rng.next_f32() as f64) >= keep {
                continue;
            }
            let inner = len - 2;
            let picks = if inner == 1 {
                vec![0]
            } else {
                let a = rng.below(inner as u64) as usize;
                let mut b = rng.below(inner as u64 - 1) as usize;
                if b >= a {
                    b += 1;
                }
                vec![a, b]
            };
            let mut sum = vec![0f64; unit.dim(2)?];
            for p in &picks {
                let v: Vec<f32> = unit.get(row)?.get(p + 1)?.to_vec1()?;
                for (s, x) in sum.iter_mut().zip(v) {
                    *s += x as f64;
                }
            }
            self.groups.push((sum, picks.len()));
        }
        Ok(())
    }

    fn count(&self) -> usize {
        self.groups.iter().map(|g| g.1).sum()
    }

    /// Mean cosine over pairs of tokens from different sentences:
    /// `(‖Σ all‖² − Σ_s ‖Σ_s‖²) / (N² − Σ_s m_s²)`.
    fn avg_cosine(&self) -> f64 {
        let dim = self.groups.first().map_or(0, |g| g.0.len());
        let mut total = vec![0f64; dim];
        let mut within = 0.0;
        let mut within_pairs = 0.0;
        for (sum, m) in &self.groups {
            for (t, v) in total.iter_mut().zip(sum) {
                *t += v;
            }
            within += sum.iter().map(|v| v * v).sum::<f64>();
            within_pairs += (*m * *m) as f64;
        }
        let n = self.count() as f64;
        let pairs = n * n - within_pairs;
        if pairs <= 0.0 {
            return f64::NAN;
        }
        (total.iter().map(|v| v * v).sum::<f64>() - within) / pairs
    }
}

/// `mean ‖x − y‖²` of two train-mode (dropout) encodings of `texts`,
/// masks from `seed`.
pub fn dropout_alignment(embedder: &Embedder, texts: &[String], seed: u64) -> Result<f64> {
    Ok(mean_square(&dropout_distances(embedder, texts, seed)?))
}

/// `‖x − y‖` between the unit vectors of two train-mode (dropout) encodings
/// of each text, masks from `seed`.
pub fn dropout_distances(embedder: &Embedder, texts: &[String], seed: u64) -> Result<Vec<f64>> {
    let mut rng = Rng::new(seed);
    let mut views = Vec::with_capacity(2);
    for _ in 0..2 {
        let dropout = Some(DropoutSeed::draw(&mut rng));
        views.push(embedder.embed_batches(texts, dropout, false, &mut |_, _| Ok(()))?);
    }
    metrics::pair_distances(&views[0], &views[1])
}

fn mean_square(v: &[f64]) -> f64 {
    v.iter().map(|d| d * d).sum::<f64>() / v.len().max(1) as f64
}
