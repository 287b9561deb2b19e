//! Token vectors → one sentence vector.

use std::fmt;
use std::str::FromStr;

use candle_core::{D, Tensor};

use crate::error::{Error, Result};
use crate::models::EncoderOutput;

/// How token vectors become a sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// The `[CLS]` token's final hidden state.
    Cls,
    /// Mean over real (unmasked) tokens.
    Mean,
    /// Element-wise max over real tokens.
    Max,
    /// Mean over real tokens of the average of the first transformer layer's
    /// output and the last one (SimCSE's `avg_first_last`).
    FirstLastAvg,
}

impl Pooling {
    pub const ALL: [Pooling; 4] = [
        Pooling::Cls,
        Pooling::Mean,
        Pooling::Max,
        Pooling::FirstLastAvg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::FirstLastAvg => "first-last-avg",
        }
    }

    /// Pools `output` with `attention_mask` (`(batch, seq)`, 1 for tokens)
    /// into `(batch, hidden)`.
    pub fn pool(self, output: &EncoderOutput, attention_mask: &Tensor) -> Result<Tensor> {
        let last = output.last();
        match self {
            Pooling::Cls => Ok(last.narrow(1, 0, 1)?.squeeze(1)?),
            Pooling::Mean => masked_mean(last, attention_mask),
            Pooling::Max => {
                let mask = attention_mask.to_dtype(last.dtype())?.unsqueeze(2)?;
                // Padding gets a large negative value so it never wins the max.
                let penalty = ((mask.ones_like()? - &mask)? * -1e9)?;
                Ok(last.broadcast_add(&penalty)?.max(1)?)
            }
            Pooling::FirstLastAvg => {
                let first = output.hidden_states.get(1).unwrap_or_else(|| output.last());
                masked_mean(&((first + last)? * 0.5)?, attention_mask)
            }
        }
    }
}

impl Pooling {
    /// Pools the hidden states of a single layer (for per-layer figures);
    /// `first-last-avg`, which needs two layers, is a masked mean here.
    pub fn pool_layer(self, hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let single = EncoderOutput {
            hidden_states: vec![hidden.clone()],
        };
        match self {
            Pooling::FirstLastAvg => Pooling::Mean.pool(&single, attention_mask),
            p => p.pool(&single, attention_mask),
        }
    }
}

/// Mean of `x` (`(batch, seq, hidden)`) over positions where `mask` is 1.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(x.dtype())?.unsqueeze(2)?;
    let summed = x.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    Ok(summed.broadcast_div(&counts)?)
}

/// Scales each row of `(batch, hidden)` to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    Ok(x.broadcast_div(&norm)?)
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Pooling::ALL
            .into_iter()
            .find(|p| p.name() == s || (s == "first_last_avg" && *p == Pooling::FirstLastAvg))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown pooling `{s}` (expected cls, mean, max or first-last-avg)"
                ))
            })
    }
}
