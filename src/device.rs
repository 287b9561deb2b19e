//! `--device auto|cpu|cuda[:i]|metal`.

use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA if built in and present, else Metal likewise, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl DeviceSpec {
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Invalid(
                        "this embedtune was built without CUDA (rebuild with `--features cuda`)"
                            .into(),
                    ));
                }
                Ok(Device::new_cuda(i)?)
            }
            DeviceSpec::Metal => {
                if !candle_core::utils::metal_is_available() {
                    return Err(Error::Invalid(
                        "this embedtune was built without Metal (rebuild with `--features metal`)"
                            .into(),
                    ));
                }
                Ok(Device::new_metal(0)?)
            }
            DeviceSpec::Auto => {
                if candle_core::utils::cuda_is_available()
                    && let Ok(d) = Device::new_cuda(0)
                {
                    return Ok(d);
                }
                if candle_core::utils::metal_is_available()
                    && let Ok(d) = Device::new_metal(0)
                {
                    return Ok(d);
                }
                Ok(Device::Cpu)
            }
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "metal" => Ok(DeviceSpec::Metal),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "unknown device `{s}` (expected auto, cpu, cuda, cuda:N or metal)"
                    ))
                }),
        }
    }
}

/// A compute precision by name: `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<candle_core::DType> {
    use candle_core::DType;
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => Err(Error::Invalid(format!(
            "`{s}` is not one of f32, bf16, f16"
        ))),
    }
}

/// Whether embedtune's own kernels cover `t`: f32 on the CPU
/// ([`crate::kernels`]) or, in a CUDA build, on CUDA (`src/cuda.rs`).
/// Elsewhere the custom ops fall back to candle's own ops.
pub(crate) fn own_f32_kernels(t: &Tensor) -> bool {
    t.dtype() == DType::F32
        && (t.device().is_cpu() || (cfg!(feature = "cuda") && t.device().is_cuda()))
}
