//! Packed rows (padding dropped) and dropout masks for the CPU pass.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::layers::DropoutSeed;
use crate::layers::dropout::keep_mask;

/// The batch with its padding dropped: each sequence's real tokens are
/// consecutive rows of one `(rows, h)` matrix, so the linear layers, norms
/// and activations never run on padding (a batch of book sentences is about
/// 30% padding at length 32). Dropout masks keep their padded indexing, so
/// they match the candle graph's draw for draw.
#[derive(Clone)]
pub(super) struct Packing {
    /// sequences, padded length, hidden size, heads, head size
    pub(super) b: usize,
    pub(super) t: usize,
    pub(super) h: usize,
    pub(super) heads: usize,
    pub(super) hd: usize,
    /// First packed row of each sequence, and the total (b + 1 entries).
    pub(super) starts: Vec<usize>,
    /// First element of each sequence's `(heads, len, len)` attention
    /// probabilities (b + 1 entries).
    pub(super) prob_starts: Vec<usize>,
    /// Padded position (`s·t + i`) of each packed row.
    pub(super) padded_row: Vec<usize>,
    /// The batch's row ids (`Batch::indices`), which key the dropout masks.
    pub(super) rows_ids: Vec<usize>,
}

impl Packing {
    /// From a right-padded attention mask `(b, t)` and the batch's row ids.
    pub(super) fn new(
        mask: &[u32],
        rows_ids: &[usize],
        t: usize,
        h: usize,
        heads: usize,
    ) -> Result<Self> {
        let b = rows_ids.len();
        let (mut starts, mut prob_starts, mut padded_row) = (vec![0], vec![0], Vec::new());
        for s in 0..b {
            let row = &mask[s * t..(s + 1) * t];
            let len = row.iter().take_while(|&&m| m != 0).count();
            if row[len..].iter().any(|&m| m != 0) {
                return Err(Error::Invalid(
                    "CPU pass: batches must be right-padded".into(),
                ));
            }
            padded_row.extend((0..len).map(|i| s * t + i));
            starts.push(starts[s] + len);
            prob_starts.push(prob_starts[s] + heads * len * len);
        }
        Ok(Packing {
            b,
            t,
            h,
            heads,
            hd: h / heads,
            starts,
            prob_starts,
            padded_row,
            rows_ids: rows_ids.to_vec(),
        })
    }

    pub(super) fn rows(&self) -> usize {
        self.starts[self.b]
    }

    pub(super) fn len(&self, s: usize) -> usize {
        self.starts[s + 1] - self.starts[s]
    }

    /// Padded `(b, t, width)` data → packed rows.
    pub(super) fn pack(&self, padded: &[f32], width: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.rows() * width];
        out.par_chunks_mut(width)
            .zip(self.padded_row.par_iter())
            .for_each(|(o, &p)| o.copy_from_slice(&padded[p * width..][..width]));
        out
    }

    /// Packed rows → padded `(b, t, h)`, zeros at padding.
    pub(super) fn unpack(&self, packed: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.b * self.t * self.h];
        self.unpack_into(packed, &mut out);
        out
    }

    /// Packed rows → `out`, `(b, t, h)` and zero at padding.
    pub(super) fn unpack_into(&self, packed: &[f32], out: &mut [f32]) {
        let h = self.h;
        out.par_chunks_mut(self.t * h)
            .enumerate()
            .for_each(|(s, seq)| {
                let rows = &packed[self.starts[s] * h..self.starts[s + 1] * h];
                seq[..rows.len()].copy_from_slice(rows);
            });
    }

    /// Splits `buf` into one mutable piece per sequence, `bounds[s]·width`
    /// to `bounds[s + 1]·width`.
    pub(super) fn split<'a>(
        &self,
        mut buf: &'a mut [f32],
        bounds: &[usize],
        width: usize,
    ) -> Vec<&'a mut [f32]> {
        let mut pieces = Vec::with_capacity(self.b);
        for s in 0..self.b {
            let (piece, rest) = buf.split_at_mut((bounds[s + 1] - bounds[s]) * width);
            pieces.push(piece);
            buf = rest;
        }
        pieces
    }
}

/// Which elements a dropout keeps, and the scale of those it keeps.
pub(super) struct Keep {
    pub(super) mask: Vec<u8>,
    pub(super) scale: f32,
}

impl Keep {
    pub(super) fn scale_at(&self, i: usize) -> f32 {
        if self.mask[i] != 0 { self.scale } else { 0.0 }
    }
}

/// The mask of dropout `site` with drop probability `p` over the padded
/// `(b, groups, t, cols)` layout, as [`crate::layers::Dropout`] computes it
/// for the candle graph; `None` in eval mode or when `p` is 0.
pub(super) fn draw_keep(
    seed: Option<DropoutSeed>,
    site: u32,
    p: f32,
    pk: &Packing,
    groups: usize,
    cols: usize,
) -> Option<Keep> {
    let seed = seed?;
    if p <= 0.0 {
        return None;
    }
    let n = pk.b * groups * pk.t * cols;
    if p >= 1.0 {
        return Some(Keep {
            mask: vec![0; n],
            scale: 0.0,
        });
    }
    Some(Keep {
        mask: keep_mask(seed.site(site), p, &pk.rows_ids, groups, pk.t, cols),
        scale: 1.0 / (1.0 - p),
    })
}

/// `x = dropout(x) + residual` on packed rows, in place (`residual` may be
/// empty: then no residual is added).
pub(super) fn dropout_add(x: &mut [f32], keep: Option<&Keep>, residual: &[f32], pk: &Packing) {
    let h = pk.h;
    x.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
        if let Some(k) = keep {
            let first = pk.padded_row[r] * h;
            row.iter_mut()
                .enumerate()
                .for_each(|(c, v)| *v *= k.scale_at(first + c));
        }
        if !residual.is_empty() {
            row.iter_mut()
                .zip(&residual[r * h..(r + 1) * h])
                .for_each(|(v, res)| *v += res);
        }
    });
}

/// The gradient through a dropout on packed rows: `g · mask · scale`.
pub(super) fn dropout_backward(g: &[f32], keep: Option<&Keep>, pk: &Packing) -> Vec<f32> {
    let mut out = g.to_vec();
    if keep.is_some() {
        dropout_add(&mut out, keep, &[], pk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_real_tokens_and_restores_padding_as_zeros() {
        // Two sequences of length 3 (padded from 2 and 1 tokens), h = 2.
        let pk = Packing::new(&[1, 1, 0, 1, 0, 0], &[0, 1], 3, 2, 1).unwrap();
        assert_eq!(pk.starts, [0, 2, 3]);
        assert_eq!(pk.prob_starts, [0, 4, 5]);
        assert_eq!(pk.padded_row, [0, 1, 3]);
        let padded: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let packed = pk.pack(&padded, 2);
        assert_eq!(packed, [0.0, 1.0, 2.0, 3.0, 6.0, 7.0]);
        assert_eq!(
            pk.unpack(&packed),
            [0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 6.0, 7.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn left_padding_is_an_error() {
        assert!(Packing::new(&[0, 1, 1], &[0], 3, 2, 1).is_err());
    }

    #[test]
    fn dropout_uses_the_padded_position_of_each_row() {
        let pk = Packing::new(&[1, 0, 1, 1], &[0, 1], 2, 1, 1).unwrap();
        // Padded positions 0, 2, 3 are the packed rows; position 1 is padding.
        let keep = Keep {
            mask: vec![1, 0, 0, 1],
            scale: 2.0,
        };
        let mut x = vec![1.0, 1.0, 1.0];
        dropout_add(&mut x, Some(&keep), &[10.0, 20.0, 30.0], &pk);
        assert_eq!(x, [12.0, 20.0, 32.0]);
        assert_eq!(
            dropout_backward(&[1.0, 1.0, 1.0], Some(&keep), &pk),
            [2.0, 0.0, 2.0]
        );
    }
}
