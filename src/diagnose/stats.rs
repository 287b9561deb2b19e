//! Mergeable statistics of a set of vectors: the pooled-embedding figures
//! of `diagnose`, in memory bounded by the dimension, whatever the number
//! of vectors, and combinable across shards and machines.
//!
//! - **Exact** (f64 moments over every vector, see [`Moments`]): `n`, the
//!   mean and the centered sum of squares of the unit vectors (average
//!   cosine, mean-vector norm, centered and uncentered spectra: top-1
//!   variance ratio, effective rank) and of the raw vectors (IsoScore).
//!   Any split of the input merges to the same moments, up to rounding.
//! - **Sampled** (a reservoir of `reservoir` vectors): uniformity, the
//!   cosine histogram and the S¹ circle angles. Each vector is keyed by a
//!   hash of `(seed, its f32 bits)` and the smallest keys are kept (ties
//!   broken by the bits), so the sample depends on the set of vectors
//!   only: merging any partition of the input gives exactly the sample of
//!   one pass. When every vector fits, the sampled figures are exact.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inference::Embeddings;
use crate::metrics::{self, CosineHistogram, EXACT_PAIRS_LIMIT, Moments, Spectrum};

/// Rows handed to one f64 product: bounds the working memory of [`VectorStats::add`].
const BLOCK_ROWS: usize = 4096;

/// Figures that need the model (train-mode passes, hidden states, tokens)
/// and so are absent from a vectors-only diagnosis.
pub const NEEDS_MODEL: [&str; 3] = ["alignment", "per_layer_avg_cosine", "token_avg_cosine"];
const EXACT: [&str; 5] = [
    "avg_cosine",
    "mean_vector_norm",
    "top1_variance_ratio",
    "effective_rank",
    "isoscore",
];
const SAMPLED: [&str; 3] = ["uniformity", "cosine_histogram", "circle_angles"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsOptions {
    /// Seed of the reservoir keys (and of the pair sample above
    /// [`EXACT_PAIRS_LIMIT`] sampled vectors).
    pub seed: u64,
    /// Vectors kept for the sampled figures.
    pub reservoir: usize,
    pub histogram_bins: usize,
    /// Uniformity temperature.
    pub t: f64,
}

impl Default for StatsOptions {
    /// `diagnose`'s defaults: every pair of up to [`EXACT_PAIRS_LIMIT`]
    /// vectors, 100 histogram bins, t = 2.
    fn default() -> Self {
        StatsOptions {
            seed: 0,
            reservoir: EXACT_PAIRS_LIMIT,
            histogram_bins: 100,
            t: 2.0,
        }
    }
}

impl StatsOptions {
    /// The sampled figures need a reservoir of at least 2 vectors.
    pub fn check(&self) -> Result<()> {
        if self.reservoir < 2 {
            return Err(Error::setting(
                "--reservoir",
                self.reservoir,
                "needs at least 2 vectors",
            ));
        }
        Ok(())
    }

    /// The first difference from `other`, in words.
    fn difference(&self, other: &StatsOptions) -> Option<String> {
        let pairs = [
            ("seed", self.seed.to_string(), other.seed.to_string()),
            (
                "reservoir",
                self.reservoir.to_string(),
                other.reservoir.to_string(),
            ),
            (
                "histogram_bins",
                self.histogram_bins.to_string(),
                other.histogram_bins.to_string(),
            ),
            ("t", self.t.to_string(), other.t.to_string()),
        ];
        pairs
            .into_iter()
            .find(|(_, a, b)| a != b)
            .map(|(name, a, b)| {
                format!("{name} {a} and {name} {b} (merge statistics made with the same options)")
            })
    }
}

/// Mergeable partial statistics of a set of vectors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VectorStats {
    dim: usize,
    opts: StatsOptions,
    /// Moments of the vectors as given.
    raw: Moments,
    /// Moments of the unit-normalised vectors.
    unit: Moments,
    sample: Reservoir,
}

/// The pooled-vector figures of `diagnose`; keys match [`super::Diagnosis`]'s.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VectorDiagnosis {
    pub n: u64,
    pub dim: usize,
    /// Pairs behind `uniformity` and the histogram.
    pub pairs: u64,
    /// Whether those are all pairs of all vectors.
    pub pairs_exact: bool,
    pub avg_cosine: f64,
    pub uniformity: f64,
    pub top1_variance_ratio: f64,
    pub effective_rank: f64,
    pub mean_vector_norm: f64,
    pub isoscore: f64,
    /// Vectors in the reservoir behind the sampled figures.
    pub sample: usize,
    pub seed: u64,
    /// Figures computed from sums over every vector.
    pub exact: Vec<String>,
    /// Figures computed from the sample (exact when `sample == n` and
    /// `pairs_exact`).
    pub sampled: Vec<String>,
    /// Figures a vectors-only diagnosis cannot give: they need the model.
    pub needs_model: Vec<String>,
    pub cosine_histogram: CosineHistogram,
    /// Angles on S¹ of the sampled unit vectors projected onto the top two
    /// uncentered principal directions.
    #[serde(skip)]
    pub circle_angles: Vec<f64>,
}

impl VectorStats {
    pub fn new(dim: usize, opts: StatsOptions) -> Self {
        VectorStats {
            dim,
            sample: Reservoir::new(opts.reservoir, opts.seed),
            opts,
            raw: Moments::new(dim),
            unit: Moments::new(dim),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn options(&self) -> &StatsOptions {
        &self.opts
    }

    /// Vectors added so far.
    pub fn len(&self) -> u64 {
        self.raw.n
    }

    pub fn is_empty(&self) -> bool {
        self.raw.n == 0
    }

    /// Adds row-major rows of `dim` values.
    pub fn add(&mut self, rows: &[f32]) -> Result<()> {
        let d = self.dim;
        if d == 0 || !rows.len().is_multiple_of(d) {
            return Err(Error::Vectors(format!(
                "{} values are not whole rows of {d}",
                rows.len()
            )));
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(Error::Vectors(format!(
                "vector {} has a non-finite value ({}) in column {}",
                self.len() + (i / d) as u64,
                rows[i],
                i % d
            )));
        }
        for block in rows.chunks(BLOCK_ROWS * d) {
            let mut unit = block.to_vec();
            metrics::normalize_rows(&mut unit, d);
            self.raw.add_rows(block)?;
            self.unit.add_rows(&unit)?;
            for row in block.chunks_exact(d) {
                self.sample.offer(row);
            }
        }
        Ok(())
    }

    /// Adds `other`'s vectors: the result is that of one pass over both.
    pub fn merge(&mut self, other: &VectorStats) -> Result<()> {
        if self.dim != other.dim {
            return Err(Error::StatsMismatch(format!(
                "vectors of {} dimensions here and {} there",
                self.dim, other.dim
            )));
        }
        if let Some(diff) = self.opts.difference(&other.opts) {
            return Err(Error::StatsMismatch(diff));
        }
        self.raw.merge(&other.raw);
        self.unit.merge(&other.unit);
        for entry in other.sample.heap.iter() {
            self.sample.offer_entry(entry);
        }
        Ok(())
    }

    /// The figures. Needs at least 2 vectors (and a reservoir of 2).
    pub fn finish(&self) -> Result<VectorDiagnosis> {
        let n = self.len();
        let sample = self.sample.rows(self.dim);
        if n < 2 || sample.len() < 2 {
            return Err(Error::Vectors(format!(
                "need at least 2 vectors (and a reservoir of 2), got {n} (reservoir {})",
                sample.len()
            )));
        }
        let pair_stats = metrics::pair_stats(
            &sample,
            self.opts.t,
            self.opts.histogram_bins,
            self.opts.seed,
        )?;
        let centered = Spectrum::of_matrix(self.unit.covariance());
        let raw = Spectrum::of_matrix(self.raw.covariance());
        let uncentered = Spectrum::of_matrix(self.unit.second_moment());
        let strings = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        Ok(VectorDiagnosis {
            n,
            dim: self.dim,
            pairs: pair_stats.pairs,
            pairs_exact: pair_stats.exact && sample.len() as u64 == n,
            avg_cosine: self.avg_cosine(),
            uniformity: pair_stats.uniformity,
            top1_variance_ratio: metrics::top1_variance_ratio(&centered),
            effective_rank: metrics::effective_rank(&centered),
            mean_vector_norm: self.mean_vector_norm(),
            isoscore: metrics::isoscore(&raw),
            sample: sample.len(),
            seed: self.opts.seed,
            exact: strings(&EXACT),
            sampled: strings(&SAMPLED),
            needs_model: strings(&NEEDS_MODEL),
            cosine_histogram: pair_stats.histogram,
            circle_angles: circle_angles(&metrics::normalized(&sample), &uncentered),
        })
    }

    /// The mean cosine over distinct pairs, `(‖Σuᵢ‖² − Σ‖uᵢ‖²) / (n(n − 1))`,
    /// which is `‖ū‖² − tr(Cov u) / (n − 1)` (zero vectors count as
    /// orthogonal).
    fn avg_cosine(&self) -> f64 {
        let n = self.unit.n as f64;
        let mean_sq: f64 = self.unit.mean.iter().map(|v| v * v).sum();
        mean_sq - self.unit.total_variance() / (n - 1.0)
    }

    /// ‖mean of the unit vectors‖.
    fn mean_vector_norm(&self) -> f64 {
        self.unit.mean().iter().map(|v| v * v).sum::<f64>().sqrt()
    }

    /// A compact binary form, for shipping partials between processes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(MAGIC);
        for v in [
            self.dim as u64,
            self.opts.seed,
            self.opts.reservoir as u64,
            self.opts.histogram_bins as u64,
        ] {
            w.u64(v);
        }
        w.f64(self.opts.t);
        for m in [&self.raw, &self.unit] {
            w.u64(m.n);
            m.mean.iter().chain(&m.m2).for_each(|v| w.f64(*v));
        }
        let rows = self.sample.rows(self.dim);
        w.u64(rows.len() as u64);
        rows.data.iter().for_each(|v| w.u32(v.to_bits()));
        w.0
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(Error::StatsFormat(
                "wrong magic (not saved by embedtune)".into(),
            ));
        }
        let dim = r.usize()?;
        let opts = StatsOptions {
            seed: r.u64()?,
            reservoir: r.usize()?,
            histogram_bins: r.usize()?,
            t: r.f64()?,
        };
        let mut stats = VectorStats::new(dim, opts);
        let square = dim
            .checked_mul(dim)
            .ok_or_else(|| Error::StatsFormat(format!("dimension {dim}")))?;
        for m in [&mut stats.raw, &mut stats.unit] {
            m.n = r.u64()?;
            m.mean = r.f64s(dim)?;
            m.m2 = r.f64s(square)?;
        }
        let rows = r.usize()?;
        let values = rows
            .checked_mul(dim)
            .ok_or_else(|| Error::StatsFormat(format!("{rows} sample rows")))?;
        let data: Vec<f32> = r.u32s(values)?.into_iter().map(f32::from_bits).collect();
        if !r.0.is_empty() {
            return Err(Error::StatsFormat(format!(
                "{} bytes after the end",
                r.0.len()
            )));
        }
        for row in data.chunks_exact(dim.max(1)) {
            stats.sample.offer(row);
        }
        Ok(stats)
    }
}

const MAGIC: &[u8] = b"EMBTVS\x00\x01";

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, k: usize) -> Result<&'a [u8]> {
        if self.0.len() < k {
            return Err(Error::StatsFormat("truncated".into()));
        }
        let (head, rest) = self.0.split_at(k);
        self.0 = rest;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn usize(&mut self) -> Result<usize> {
        let v = self.u64()?;
        usize::try_from(v).map_err(|_| Error::StatsFormat(format!("size {v}")))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn f64s(&mut self, k: usize) -> Result<Vec<f64>> {
        self.check(k, 8)?;
        (0..k).map(|_| self.f64()).collect()
    }
    fn u32s(&mut self, k: usize) -> Result<Vec<u32>> {
        self.check(k, 4)?;
        Ok(self
            .take(k * 4)?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect())
    }
    /// Fails before allocating when `k` values of `size` bytes cannot be there.
    fn check(&self, k: usize, size: usize) -> Result<()> {
        match k.checked_mul(size) {
            Some(bytes) if bytes <= self.0.len() => Ok(()),
            _ => Err(Error::StatsFormat("truncated".into())),
        }
    }
}

/// The `cap` vectors with the smallest `(key, bits)`, `key` a seeded hash
/// of the bits: a sample that depends on the set of vectors only.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(into = "SampleRows", try_from = "SampleRows")]
struct Reservoir {
    cap: usize,
    seed: u64,
    /// A max-heap: the top is the first to leave.
    heap: BinaryHeap<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    key: u64,
    bits: Box<[u32]>,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .cmp(&other.key)
            .then_with(|| self.bits.cmp(&other.bits))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Reservoir {
    fn new(cap: usize, seed: u64) -> Self {
        Reservoir {
            cap,
            seed,
            heap: BinaryHeap::new(),
        }
    }

    fn offer(&mut self, row: &[f32]) {
        let key = row_key(self.seed, row);
        // Most rows lose to the top on the key alone: no allocation.
        if let Some(top) = self.heap.peek().filter(|_| self.heap.len() >= self.cap)
            && key > top.key
        {
            return;
        }
        let bits: Box<[u32]> = row.iter().map(|v| v.to_bits()).collect();
        self.offer_entry(&Entry { key, bits });
    }

    fn offer_entry(&mut self, entry: &Entry) {
        if self.heap.len() < self.cap {
            self.heap.push(entry.clone());
        } else if let Some(mut top) = self.heap.peek_mut()
            && *entry < *top
        {
            *top = entry.clone();
        }
    }

    /// The kept vectors, smallest key first.
    fn rows(&self, dim: usize) -> Embeddings {
        let mut entries: Vec<&Entry> = self.heap.iter().collect();
        entries.sort_unstable();
        Embeddings {
            dim,
            data: entries
                .iter()
                .flat_map(|e| e.bits.iter().map(|b| f32::from_bits(*b)))
                .collect(),
        }
    }
}

/// A seeded 64-bit hash of a row's f32 bits.
fn row_key(seed: u64, row: &[f32]) -> u64 {
    let mut h = mix(seed ^ 0x5851_f42d_4c95_7f2d);
    for pair in row.chunks(2) {
        let lo = pair[0].to_bits() as u64;
        let hi = pair.get(1).map_or(0, |v| v.to_bits() as u64);
        h = (h ^ (lo | hi << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
    }
    mix(h ^ row.len() as u64)
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The serde form of a [`Reservoir`]: its rows (keys are recomputed).
#[derive(Serialize, Deserialize)]
struct SampleRows {
    cap: usize,
    seed: u64,
    dim: usize,
    rows: Vec<f32>,
}

impl From<Reservoir> for SampleRows {
    fn from(r: Reservoir) -> Self {
        let dim = r.heap.peek().map_or(0, |e| e.bits.len());
        SampleRows {
            cap: r.cap,
            seed: r.seed,
            dim,
            rows: r.rows(dim).data,
        }
    }
}

impl TryFrom<SampleRows> for Reservoir {
    type Error = Error;
    fn try_from(s: SampleRows) -> Result<Self> {
        if !s.rows.len().is_multiple_of(s.dim) {
            return Err(Error::StatsFormat("ragged sample rows".into()));
        }
        let mut r = Reservoir::new(s.cap, s.seed);
        for row in s.rows.chunks_exact(s.dim.max(1)) {
            r.offer(row);
        }
        Ok(r)
    }
}

/// Angles of the unit rows projected onto the top two principal directions
/// of their (uncentered) second moment, so a shared offset — the cone —
/// stays visible as a narrow arc. Each direction's sign is fixed (largest
/// component positive), so equal statistics draw the same figure.
fn circle_angles(unit: &Embeddings, uncentered: &Spectrum) -> Vec<f64> {
    if uncentered.eigenvectors.len() < 2 {
        return Vec::new();
    }
    let oriented = |v: &Vec<f64>| -> Vec<f64> {
        let big = v
            .iter()
            .fold(0f64, |a, x| if x.abs() > a.abs() { *x } else { a });
        let s = if big < 0.0 { -1.0 } else { 1.0 };
        v.iter().map(|x| x * s).collect()
    };
    let (p1, p2) = (
        oriented(&uncentered.eigenvectors[0]),
        oriented(&uncentered.eigenvectors[1]),
    );
    unit.rows()
        .map(|r| {
            let a: f64 = r.iter().zip(&p1).map(|(x, y)| *x as f64 * y).sum();
            let b: f64 = r.iter().zip(&p2).map(|(x, y)| *x as f64 * y).sum();
            b.atan2(a)
        })
        .collect()
}

/// The statistics of every vector in `files` (one dataset: any order of
/// shards gives the same result); `progress` gets the rows added so far.
pub fn of_files(
    files: Vec<crate::source::vectors::VectorFile>,
    opts: StatsOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<VectorStats> {
    let dim = files.first().map_or(0, |f| f.dim());
    let mut stats = VectorStats::new(dim, opts);
    for file in files {
        // One partial per file, so errors number the file's own rows.
        let mut part = VectorStats::new(dim, stats.opts.clone());
        let path = file.path().to_path_buf();
        for chunk in file {
            part.add(&chunk?).map_err(|e| match e {
                Error::Vectors(m) => Error::data(&path, m),
                e => e,
            })?;
            progress(stats.len() + part.len());
        }
        stats.merge(&part)?;
    }
    Ok(stats)
}

/// The statistics saved (by [`VectorStats::to_bytes`]) in `paths`, merged;
/// `None` when there are none.
pub fn merge_files(paths: &[std::path::PathBuf]) -> Result<Option<VectorStats>> {
    let mut merged: Option<VectorStats> = None;
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let in_file = |e: Error| Error::data(path, e.to_string());
        let s = VectorStats::from_bytes(&bytes).map_err(in_file)?;
        match &mut merged {
            Some(m) => m.merge(&s).map_err(in_file)?,
            None => merged = Some(s),
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const DIM: usize = 12;

    /// `n` random vectors leaning towards a shared direction (a cone).
    fn vectors(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n * DIM)
            .map(|i| rng.next_f32() - 0.5 + if i % DIM == 0 { 0.8 } else { 0.1 })
            .collect()
    }

    fn stats_of(rows: &[f32], opts: &StatsOptions) -> VectorStats {
        let mut s = VectorStats::new(DIM, opts.clone());
        s.add(rows).unwrap();
        s
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * a.abs().max(b.abs()).max(1e-300)
    }

    fn assert_same(a: &VectorDiagnosis, b: &VectorDiagnosis, exact_tol: f64) {
        for (name, x, y) in [
            ("avg_cosine", a.avg_cosine, b.avg_cosine),
            ("mean_vector_norm", a.mean_vector_norm, b.mean_vector_norm),
            ("top1", a.top1_variance_ratio, b.top1_variance_ratio),
            ("effective_rank", a.effective_rank, b.effective_rank),
            ("isoscore", a.isoscore, b.isoscore),
        ] {
            assert!(close(x, y, exact_tol), "{name}: {x} vs {y}");
        }
        assert_eq!(a.n, b.n);
        assert_eq!(a.sample, b.sample);
        assert_eq!(a.pairs, b.pairs);
        assert_eq!(a.uniformity.to_bits(), b.uniformity.to_bits());
        assert_eq!(a.cosine_histogram, b.cosine_histogram);
        assert_eq!(a.circle_angles.len(), b.circle_angles.len());
        for (x, y) in a.circle_angles.iter().zip(&b.circle_angles) {
            assert!((x - y).abs() < 1e-9, "circle angle {x} vs {y}");
        }
    }

    #[test]
    fn any_split_merges_to_the_whole() {
        let rows = vectors(600, 1);
        let opts = StatsOptions {
            reservoir: 150,
            seed: 7,
            ..StatsOptions::default()
        };
        let whole = stats_of(&rows, &opts).finish().unwrap();
        assert!(!whole.pairs_exact && whole.sample == 150);
        // Uneven shards, merged in a scrambled order.
        let cuts = [0, 1, 77, 300, 301, 600];
        let mut shards: Vec<VectorStats> = cuts
            .windows(2)
            .map(|w| stats_of(&rows[w[0] * DIM..w[1] * DIM], &opts))
            .collect();
        shards.reverse();
        shards.swap(1, 3);
        let mut merged = VectorStats::new(DIM, opts.clone());
        for s in &shards {
            merged.merge(s).unwrap();
        }
        assert_same(&merged.finish().unwrap(), &whole, 1e-12);
    }

    #[test]
    fn reservoir_is_the_same_in_any_order() {
        let rows = vectors(300, 2);
        let opts = StatsOptions {
            reservoir: 40,
            ..StatsOptions::default()
        };
        let forward = stats_of(&rows, &opts);
        let mut reversed: Vec<f32> = Vec::new();
        for r in rows.chunks_exact(DIM).rev() {
            reversed.extend_from_slice(r);
        }
        let backward = stats_of(&reversed, &opts);
        assert_eq!(
            forward.sample.rows(DIM).data,
            backward.sample.rows(DIM).data
        );
        // Another seed, another sample.
        let other = stats_of(
            &rows,
            &StatsOptions {
                seed: 1,
                ..opts.clone()
            },
        );
        assert_ne!(forward.sample.rows(DIM).data, other.sample.rows(DIM).data);
    }

    #[test]
    fn finish_matches_the_in_memory_metrics() {
        let rows = vectors(500, 3);
        let e = Embeddings {
            dim: DIM,
            data: rows.clone(),
        };
        let v = stats_of(&rows, &StatsOptions::default()).finish().unwrap();
        let unit = metrics::normalized(&e);
        let centered = Spectrum::of(&unit, true).unwrap();
        let raw = Spectrum::of(&e, true).unwrap();
        let pairs = metrics::pair_stats(&e, 2.0, 100, 0).unwrap();
        for (name, x, y) in [
            ("avg_cosine", v.avg_cosine, metrics::avg_cosine(&e).unwrap()),
            (
                "mean_vector_norm",
                v.mean_vector_norm,
                metrics::mean_vector_norm(&e),
            ),
            (
                "top1",
                v.top1_variance_ratio,
                metrics::top1_variance_ratio(&centered),
            ),
            (
                "effective_rank",
                v.effective_rank,
                metrics::effective_rank(&centered),
            ),
            ("isoscore", v.isoscore, metrics::isoscore(&raw)),
            ("uniformity", v.uniformity, pairs.uniformity),
        ] {
            assert!(close(x, y, 1e-9), "{name}: {x} vs {y}");
        }
        // Every vector fits the reservoir: the sampled figures are exact.
        assert!(v.pairs_exact && v.sample == 500 && v.pairs == 500 * 499 / 2);
        assert_eq!(v.cosine_histogram, pairs.histogram);
        assert_eq!(v.circle_angles.len(), 500);
    }

    #[test]
    fn bytes_and_serde_round_trip() {
        let opts = StatsOptions {
            reservoir: 30,
            seed: 3,
            histogram_bins: 17,
            t: 1.5,
        };
        let s = stats_of(&vectors(100, 4), &opts);
        let back = VectorStats::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back.raw, s.raw);
        assert_eq!(back.unit, s.unit);
        assert_eq!(back.opts, s.opts);
        assert_same(&back.finish().unwrap(), &s.finish().unwrap(), 0.0);
        let json = serde_json::to_string(&s).unwrap();
        let from_json: VectorStats = serde_json::from_str(&json).unwrap();
        assert_eq!(from_json.sample.rows(DIM).data, s.sample.rows(DIM).data);
        let bytes = s.to_bytes();
        for bad in [&bytes[..bytes.len() - 1], &bytes[1..], b"".as_slice()] {
            assert!(matches!(
                VectorStats::from_bytes(bad),
                Err(Error::StatsFormat(_))
            ));
        }
    }

    #[test]
    fn bad_rows_and_mismatched_merges_are_errors() {
        let mut s = VectorStats::new(DIM, StatsOptions::default());
        assert!(matches!(s.add(&[0.0; DIM + 1]), Err(Error::Vectors(_))));
        let mut nan = vec![1.0; 2 * DIM];
        nan[DIM + 3] = f32::NAN;
        let err = s.add(&nan).unwrap_err().to_string();
        assert!(
            err.contains("vector 1") && err.contains("column 3"),
            "{err}"
        );
        assert_eq!(s.len(), 0);
        assert!(matches!(s.finish(), Err(Error::Vectors(_))));
        let other_dim = VectorStats::new(DIM + 1, StatsOptions::default());
        assert!(matches!(s.merge(&other_dim), Err(Error::StatsMismatch(_))));
        let other_seed = VectorStats::new(
            DIM,
            StatsOptions {
                seed: 9,
                ..StatsOptions::default()
            },
        );
        let err = s.merge(&other_seed).unwrap_err();
        assert!(err.to_string().contains("seed 0 and seed 9"), "{err}");
    }
}
