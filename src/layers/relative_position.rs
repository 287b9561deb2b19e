//! Bucketed relative position bias (T5, MPNet): attention score `(i, j)`
//! of head `h` gets `table[bucket(j − i)][h]`, one learned table shared by
//! every layer.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// The bidirectional bucketing of `transformers`' MPNet
/// (`MPNetEncoder.relative_position_bucket`): half the buckets for each
/// direction, exact distances below `num_buckets / 4`, logarithmic ones up
/// to `max_distance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelativeBuckets {
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl RelativeBuckets {
    /// The bucket of key position minus query position, in the same f32
    /// arithmetic as PyTorch (the logarithm's rounding decides edge cases).
    pub fn bucket(&self, relative: i64) -> usize {
        let half = (self.num_buckets / 2) as i64;
        let n = -relative;
        let mut ret = if n < 0 { half } else { 0 };
        let n = n.abs();
        let max_exact = half / 2;
        if n < max_exact {
            return (ret + n) as usize;
        }
        let scale = (self.max_distance as f64 / max_exact as f64).ln() as f32;
        let log = (n as f32 / max_exact as f32).ln() / scale * (half - max_exact) as f32;
        ret += (max_exact + log as i64).min(half - 1);
        ret as usize
    }

    /// Buckets of `j − i` for `j − i` in `−(t−1) ..= t−1`, at index
    /// `j − i + t − 1`.
    pub fn offsets(&self, t: usize) -> Vec<u32> {
        let t = t as i64;
        (1 - t..t).map(|d| self.bucket(d) as u32).collect()
    }

    /// The bias `(1, heads, t, t)` from `table` `(buckets, heads)`;
    /// differentiable in `table`.
    pub fn bias(&self, table: &Tensor, t: usize) -> Result<Tensor> {
        let offsets = self.offsets(t);
        let ids: Vec<u32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| (i, j)))
            .map(|(i, j)| offsets[j + t - 1 - i])
            .collect();
        let ids = Tensor::from_vec(ids, t * t, &Device::Cpu)?.to_device(table.device())?;
        let heads = table.dim(1)?;
        Ok(table
            .index_select(&ids, 0)?
            .reshape((t, t, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpnet_buckets() {
        // transformers' MPNet with 32 buckets and max distance 128: query 0
        // against keys 0.., and key 0 against queries 0...
        let b = RelativeBuckets {
            num_buckets: 32,
            max_distance: 128,
        };
        let ahead: Vec<usize> = [0, 1, 7, 8, 11, 12, 16, 32, 64, 127, 128, 500]
            .iter()
            .map(|&d| b.bucket(d))
            .collect();
        assert_eq!(ahead, [0, 17, 23, 24, 24, 25, 26, 28, 30, 31, 31, 31]);
        let behind: Vec<usize> = [1, 7, 8, 16, 32, 64, 128]
            .iter()
            .map(|&d| b.bucket(-d))
            .collect();
        assert_eq!(behind, [1, 7, 8, 10, 12, 14, 15]);
        assert_eq!(b.offsets(3), [2, 1, 0, 17, 18]);
    }
}
