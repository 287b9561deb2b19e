//! `--device auto|cpu|cuda[:i]|metal`.

use std::str::FromStr;

use candle_core::Device;

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
