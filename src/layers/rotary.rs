//! Rotary position embeddings (RoFormer; the "rotate half" layout of
//! Llama and ModernBERT), as differentiable candle ops.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// cos and sin tables for positions `0..t` of a head of size `head_dim`
/// with base `theta`: `(t, head_dim)` each, the frequencies repeated for
/// both halves, as `transformers` computes them (in f32).
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub fn new(
        theta: f64,
        head_dim: usize,
        t: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(t * head_dim);
        let mut sin = Vec::with_capacity(t * head_dim);
        for pos in 0..t {
            for k in 0..head_dim {
                let angle = pos as f32 * inv_freq[k % half];
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let table = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, (t, head_dim), device)?.to_dtype(dtype)?)
        };
        Ok(Rotary {
            cos: table(cos)?,
            sin: table(sin)?,
        })
    }

    /// Rotates `x` `(b, heads, t, head_dim)`: `x·cos + rotate_half(x)·sin`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(3)?;
        let (x1, x2) = (x.narrow(3, 0, d / 2)?, x.narrow(3, d / 2, d - d / 2)?);
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
        Ok(x.broadcast_mul(&self.cos)?
            .add(&rotated.broadcast_mul(&self.sin)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_norms_and_relative_angles() {
        let dev = Device::Cpu;
        let r = Rotary::new(10_000.0, 4, 3, DType::F32, &dev).unwrap();
        // The same vector at positions 0, 1, 2: norms kept, position 0
        // untouched, and q·k depends only on the distance.
        let v = Tensor::new(&[0.3f32, -1.0, 0.5, 2.0], &dev).unwrap();
        let x = v
            .unsqueeze(0)
            .unwrap()
            .repeat((3, 1))
            .unwrap()
            .reshape((1, 1, 3, 4))
            .unwrap();
        let y: Vec<Vec<f32>> = r
            .apply(&x)
            .unwrap()
            .reshape((3, 4))
            .unwrap()
            .to_vec2()
            .unwrap();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert_eq!(y[0], [0.3, -1.0, 0.5, 2.0]);
        for row in &y {
            assert!((dot(row, row) - dot(&y[0], &y[0])).abs() < 1e-5);
        }
        assert!((dot(&y[0], &y[1]) - dot(&y[1], &y[2])).abs() < 1e-5);
    }
}
