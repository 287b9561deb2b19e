use candle_core::Tensor;

use crate::error::Result;
use crate::rng::Rng;

/// Inverted dropout whose masks come from the project's seeded [`Rng`], so a
/// training run is reproducible on every device.
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

    /// Applies dropout when `rng` is given (train mode); returns `x` otherwise.
    pub fn forward(&self, x: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        let Some(rng) = rng else {
            return Ok(x.clone());
        };
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        if self.p >= 1.0 {
            return Ok(x.zeros_like()?);
        }
        let keep = 1.0 - self.p;
        let scale = 1.0 / keep;
        let n = x.elem_count();
        let mask: Vec<f32> = (0..n)
            .map(|_| if rng.next_f32() < keep { scale } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}
