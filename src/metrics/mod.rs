//! Anisotropy and STS metrics on sentence embeddings.
//!
//! Exact definitions live with each function so results can be compared
//! across tools. Everything here is linear in memory in the number of
//! sentences: pairwise figures are accumulated block by block (all pairs up
//! to [`EXACT_PAIRS_LIMIT`] sentences) or over a seeded sample of pairs.

mod correlation;
mod moments;
mod pairs;
mod spectrum;

pub use correlation::{pearson, spearman};
pub use moments::Moments;
pub use pairs::{
    CosineHistogram, EXACT_PAIRS_LIMIT, PairStats, SAMPLED_PAIRS, alignment, avg_cosine,
    mean_vector_norm, normalize_rows, normalized, pair_distances, pair_stats,
};
pub use spectrum::{Spectrum, effective_rank, isoscore, top1_variance_ratio};
