use candle_core::{D, Tensor};

use crate::error::Result;
use crate::layers::WeightsView;

/// `y = x Wᵀ + b`, with the weight in PyTorch's `(out, in)` layout.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    pub fn load(vb: &WeightsView, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get("weight", &[out_dim, in_dim])?;
        let bias = vb.get("bias", &[out_dim])?;
        Ok(Linear::new(weight, Some(bias)))
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Fold leading dimensions into one so a single 2-D gemm does the work
        // (a batched matmul against a broadcast weight is slower on CPU).
        let dims = x.dims().to_vec();
        let in_dim = *dims
            .last()
            .expect("linear input has at least one dimension");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = y.dim(D::Minus1)?;
        Ok(y.reshape(out_dims)?)
    }
}
