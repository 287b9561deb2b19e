//! Inverted dropout with counter-based masks.
//!
//! Whether element `(row, position, column)` of dropout site `site` is kept
//! is a pure function of the pass's [`DropoutSeed`] and those coordinates
//! (a hash, like the counter-based Philox generator of cuRAND and PyTorch),
//! not the next draw of a sequential generator. So:
//! - the masks do not depend on how rows are batched, padded or split: a
//!   batch encoded in chunks (gradient caching) drops exactly what the
//!   whole batch drops;
//! - the candle graph, the plain-CPU pass and a device kernel compute the
//!   same masks independently, with no mask built on the host and copied;
//! - a training run is reproducible from one `u64` per step.
//!
//! Rows are identified by [`crate::tokenize::Batch::indices`], positions by
//! the token's index in its sequence, columns by the feature index (or, for
//! attention probabilities, `head · 2¹⁶ + key position`).

use candle_core::Tensor;

use crate::error::Result;
use crate::rng::Rng;

/// The seed of one forward pass's dropout masks (train mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DropoutSeed(pub u64);

impl DropoutSeed {
    /// A fresh seed from `rng` (one draw).
    pub fn draw(rng: &mut Rng) -> Self {
        DropoutSeed(rng.next_u64())
    }

    /// The key of one dropout site of the network (e.g. layer 3's attention
    /// probabilities); every site gets independent masks.
    pub fn site(self, site: u32) -> SiteKey {
        SiteKey(mix(self.0 ^ mix(site as u64 ^ 0x6A09_E667_F3BC_C908)))
    }
}

/// SplitMix64's finaliser: a bijective 64-bit mixer with full avalanche.
#[inline(always)]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const COLUMN_STEP: u64 = 0x9E37_79B9_7F4A_7C15;

/// The masks of one dropout site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteKey(pub u64);

impl SiteKey {
    /// The key of one token (row, position) of this site.
    #[inline]
    pub fn token(self, row: u64, pos: u64) -> u64 {
        mix(mix(self.0 ^ row) ^ pos.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }
}

/// 24 uniform bits for column `col` of the token with key `token`.
#[inline(always)]
pub fn uniform_bits(token: u64, col: u64) -> u32 {
    (mix(token ^ col.wrapping_mul(COLUMN_STEP)) >> 40) as u32
}

/// Elements with [`uniform_bits`] below this are kept, for drop
/// probability `p` in (0, 1).
pub fn keep_threshold(p: f32) -> u32 {
    ((1.0 - p as f64) * (1u64 << 24) as f64).ceil() as u32
}

/// A keep-mask (1 = kept) over a padded `(b, groups, t, cols)` block, row
/// `s` being batch row `rows[s]`; element `(s, a, i, c)` is column
/// `a · 2¹⁶ + c` of token `(rows[s], i)`.
pub fn keep_mask(
    key: SiteKey,
    p: f32,
    rows: &[usize],
    groups: usize,
    t: usize,
    cols: usize,
) -> Vec<u8> {
    use rayon::prelude::*;
    let threshold = keep_threshold(p);
    let mut mask = vec![0u8; rows.len() * groups * t * cols];
    mask.par_chunks_mut(groups * t * cols)
        .zip(rows.par_iter())
        .for_each(|(block, &row)| {
            for (a, plane) in block.chunks_mut(t * cols).enumerate() {
                for (i, line) in plane.chunks_mut(cols).enumerate() {
                    let token = key.token(row as u64, i as u64);
                    let base = (a as u64) << 16;
                    for (c, m) in line.iter_mut().enumerate() {
                        *m = (uniform_bits(token, base | c as u64) < threshold) as u8;
                    }
                }
            }
        });
    mask
}

/// Train-mode dropout for one forward pass: the seed and the batch's row
/// ids.
#[derive(Debug, Clone, Copy)]
pub struct DropoutCtx<'a> {
    pub seed: DropoutSeed,
    pub rows: &'a [usize],
}

/// Inverted dropout with drop probability `p`.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    p: f32,
}

impl Dropout {
    pub fn new(p: f64) -> Self {
        Dropout { p: p as f32 }
    }

    pub fn p(&self) -> f32 {
        self.p
    }

    /// Whether this dropout changes anything in train mode.
    pub fn active(&self) -> bool {
        self.p > 0.0
    }

    /// Applies dropout at `site` to `x` of shape `(b, t, cols)` (or
    /// `(b, groups, t, cols)`) when `ctx` is given (train mode); returns `x`
    /// otherwise.
    pub fn forward(&self, x: &Tensor, ctx: Option<DropoutCtx>, site: u32) -> Result<Tensor> {
        let Some(ctx) = ctx else {
            return Ok(x.clone());
        };
        if !self.active() {
            return Ok(x.clone());
        }
        if self.p >= 1.0 {
            return Ok(x.zeros_like()?);
        }
        let dims = x.dims();
        let (b, rest) = (dims[0], &dims[1..]);
        let (groups, t, cols) = match *rest {
            [t, c] => (1, t, c),
            [g, t, c] => (g, t, c),
            _ => {
                let msg = format!("dropout: expected a 3-D or 4-D tensor, got {dims:?}");
                return Err(candle_core::Error::Msg(msg).into());
            }
        };
        let mask = keep_mask(ctx.seed.site(site), self.p, ctx.rows, groups, t, cols);
        debug_assert_eq!(ctx.rows.len(), b);
        let scale = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = mask.into_iter().map(|k| k as f32 * scale).collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_rate_matches_p_and_sites_differ() {
        let seed = DropoutSeed(7);
        let rows: Vec<usize> = (0..64).collect();
        let a = keep_mask(seed.site(0), 0.1, &rows, 2, 8, 64);
        let kept = a.iter().filter(|&&m| m == 1).count() as f64 / a.len() as f64;
        assert!((kept - 0.9).abs() < 0.01, "kept {kept}");
        let b = keep_mask(seed.site(1), 0.1, &rows, 2, 8, 64);
        assert_ne!(a, b);
        let c = keep_mask(DropoutSeed(8).site(0), 0.1, &rows, 2, 8, 64);
        assert_ne!(a, c);
    }

    #[test]
    fn masks_do_not_depend_on_batching_or_padding() {
        let key = DropoutSeed(3).site(2);
        // Rows 5 and 9 padded to length 4, then row 9 alone padded to 6.
        let both = keep_mask(key, 0.3, &[5, 9], 1, 4, 16);
        let alone = keep_mask(key, 0.3, &[9], 1, 6, 16);
        assert_eq!(&both[4 * 16..], &alone[..4 * 16]);
    }

    #[test]
    fn threshold_keeps_the_expected_share() {
        assert_eq!(keep_threshold(0.5), 1 << 23);
        assert_eq!(keep_threshold(0.0), 1 << 24);
    }
}
