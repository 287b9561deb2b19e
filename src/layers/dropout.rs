//! Inverted dropout with counter-based masks.
//!
//! Whether element `(row, position, column)` of dropout site `site` is kept
//! is a pure function of the pass's [`DropoutSeed`] and those coordinates
//! (a hash, like the counter-based Philox generator of cuRAND and PyTorch),
//! not the next draw of a sequential generator. So:
//! - the masks do not depend on how rows are batched, padded or split: a
//!   batch encoded in chunks (gradient caching) drops exactly what the
//!   whole batch drops;
//! - the candle graph, the plain-CPU pass and the CUDA kernel
//!   (`cuda/dropout.cu`) compute the same masks independently, with no mask
//!   built on the host and copied (Metal, without a kernel, copies one);
//! - no mask is kept for the backward pass: it is the same op applied to
//!   the gradient;
//! - a training run is reproducible from one `u64` per step.
//!
//! Rows are identified by [`crate::tokenize::Batch::indices`], positions by
//! the token's index in its sequence, columns by the feature index (or, for
//! attention probabilities, `head · 2¹⁶ + key position`).

use candle_core::{CpuStorage, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

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
    let threshold = keep_threshold(p);
    let mut mask = vec![0u8; rows.len() * groups * t * cols];
    mask.par_chunks_mut(groups * t * cols)
        .zip(rows.par_iter())
        .for_each(|(block, &row)| {
            for_each_keep(key, threshold, row as u64, t, cols, block, |m, keep| {
                *m = keep as u8
            })
        });
    mask
}

/// Calls `f` on each element of one row's `(groups, t, cols)` block with
/// whether it is kept.
fn for_each_keep<T>(
    key: SiteKey,
    threshold: u32,
    row: u64,
    t: usize,
    cols: usize,
    block: &mut [T],
    mut f: impl FnMut(&mut T, bool),
) {
    for (a, plane) in block.chunks_mut(t * cols).enumerate() {
        for (i, line) in plane.chunks_mut(cols).enumerate() {
            let token = key.token(row, i as u64);
            let base = (a as u64) << 16;
            for (c, m) in line.iter_mut().enumerate() {
                f(m, uniform_bits(token, base | c as u64) < threshold);
            }
        }
    }
}

/// Dropout as one op over a contiguous `(b, groups, t, cols)` block: kept
/// elements scaled by `1 / (1 − p)` (in f32), the rest zero. Its backward is
/// itself applied to the gradient.
#[derive(Clone)]
pub(crate) struct DropoutOp {
    pub(crate) key: SiteKey,
    pub(crate) threshold: u32,
    pub(crate) scale: f32,
    /// The batch row id of each of the `b` rows.
    pub(crate) rows: Vec<u64>,
    pub(crate) groups: usize,
    pub(crate) t: usize,
    pub(crate) cols: usize,
}

impl DropoutOp {
    fn cpu<T: WithDType>(&self, x: &[T], l: &Layout) -> candle_core::Result<Vec<T>> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("dropout input must be contiguous");
        };
        let mut out = x[start..end].to_vec();
        let per_row = self.groups * self.t * self.cols;
        out.par_chunks_mut(per_row)
            .zip(self.rows.par_iter())
            .for_each(|(block, &row)| {
                for_each_keep(
                    self.key,
                    self.threshold,
                    row,
                    self.t,
                    self.cols,
                    block,
                    |v, keep| {
                        *v = if keep {
                            T::from_f64(v.to_f64() * self.scale as f64)
                        } else {
                            T::zero()
                        }
                    },
                )
            });
        Ok(out)
    }
}

impl candle_core::CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "embedtune-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(x) => CpuStorage::F32(self.cpu(x, l)?),
            CpuStorage::F64(x) => CpuStorage::F64(self.cpu(x, l)?),
            CpuStorage::BF16(x) => CpuStorage::BF16(self.cpu(x, l)?),
            CpuStorage::F16(x) => CpuStorage::F16(self.cpu(x, l)?),
            other => {
                use candle_core::backend::BackendStorage;
                candle_core::bail!("dropout: unsupported dtype {:?}", other.dtype())
            }
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::dropout(s, l, self)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
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
        if ctx.rows.len() != b {
            let msg = format!("dropout: {} row ids for {b} rows", ctx.rows.len());
            return Err(candle_core::Error::Msg(msg).into());
        }
        let key = ctx.seed.site(site);
        let scale = 1.0 / (1.0 - self.p);
        if x.device().is_metal() {
            // No kernel there: the mask is made here and copied.
            let mask = keep_mask(key, self.p, ctx.rows, groups, t, cols);
            let mask: Vec<f32> = mask.into_iter().map(|k| k as f32 * scale).collect();
            let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
            return Ok(x.mul(&mask)?);
        }
        let op = DropoutOp {
            key,
            threshold: keep_threshold(self.p),
            scale,
            rows: ctx.rows.iter().map(|&r| r as u64).collect(),
            groups,
            t,
            cols,
        };
        Ok(x.contiguous()?.apply_op1(op)?)
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

    /// The op (what the graph and CUDA run) keeps what `keep_mask` keeps,
    /// scales by 1/(1 − p), and its gradient is the same mask.
    #[test]
    fn the_op_applies_keep_mask_forward_and_backward() {
        use candle_core::{Device, Var};
        let (rows, p) = ([4usize, 1, 7], 0.25f32);
        let ctx = DropoutCtx {
            seed: DropoutSeed(11),
            rows: &rows,
        };
        let x = Var::from_tensor(
            &Tensor::ones((3, 2, 5, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let y = Dropout::new(p as f64)
            .forward(x.as_tensor(), Some(ctx), 4)
            .unwrap();
        let mask = keep_mask(DropoutSeed(11).site(4), p, &rows, 2, 5, 8);
        let expect: Vec<f32> = mask.iter().map(|&k| k as f32 / (1.0 - p)).collect();
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, expect);
        let grads = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let expect: Vec<f32> = expect.iter().map(|v| v * 3.0).collect();
        assert_eq!(g, expect);
    }

    #[test]
    fn threshold_keeps_the_expected_share() {
        assert_eq!(keep_threshold(0.5), 1 << 23);
        assert_eq!(keep_threshold(0.0), 1 << 24);
    }
}
