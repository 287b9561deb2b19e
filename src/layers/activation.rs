use candle_core::Tensor;

pub use crate::kernels::activation::Activation;

use crate::error::{Error, Result};

impl Activation {
    /// The `hidden_act` values of Hugging Face configs that embedtune supports.
    pub fn from_config(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::Invalid(format!(
                "unsupported hidden_act `{other}` (supported: gelu, gelu_new, gelu_pytorch_tanh, relu)"
            ))),
        }
    }

    /// The activation as a differentiable candle op.
    pub fn forward_tensor(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Gelu => super::fused::gelu_erf(x)?,
            Activation::GeluTanh => x.gelu()?,
            Activation::Relu => x.relu()?,
        })
    }
}
