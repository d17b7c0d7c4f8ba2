//! Mixed precision: fp32, or CUDA autocast to fp16 or bf16.
//!
//! tch's `autocast` always uses libtorch's default CUDA autocast dtype
//! (fp16) and exposes no way to pick bf16, so we set the dtype through
//! libtorch's own `at::autocast::set_autocast_dtype`, which every libtorch
//! 2.x exports.

use serde::{Deserialize, Serialize};
use tch::Device;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
}

// c10's `DeviceType` and `ScalarType` are `enum class : int8_t`.
const DEVICE_CUDA: i8 = 1;
const SCALAR_HALF: i8 = 5;
const SCALAR_BFLOAT16: i8 = 15;

extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device_type: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_get_autocast_dtype(device_type: i8) -> i8;
}

impl Precision {
    /// Runs `f` under this precision's autocast on `device`. Reduced
    /// precision needs a CUDA device; the caller checks (see [`Precision::check`]).
    pub fn run<T>(self, device: Device, f: impl FnOnce() -> T) -> T {
        let dtype = match self {
            Precision::Fp32 => return f(),
            _ if !device.is_cuda() => return f(),
            Precision::Fp16 => SCALAR_HALF,
            Precision::Bf16 => SCALAR_BFLOAT16,
        };
        // SAFETY: plain setters of a thread-local libtorch setting, with enum
        // values of the declared C++ types.
        let previous = unsafe { at_get_autocast_dtype(DEVICE_CUDA) };
        unsafe { at_set_autocast_dtype(DEVICE_CUDA, dtype) };
        let result = tch::autocast(true, f);
        unsafe { at_set_autocast_dtype(DEVICE_CUDA, previous) };
        result
    }

    /// An error message when this precision cannot run on `device`.
    pub fn check(self, device: Device) -> anyhow::Result<()> {
        if self != Precision::Fp32 && !device.is_cuda() {
            anyhow::bail!("--precision {self:?} needs a CUDA device; use fp32 on the CPU");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The declared signatures match libtorch's: the setting round-trips
    /// (it is a plain thread-local, so no GPU is needed).
    #[test]
    fn the_autocast_dtype_round_trips_through_libtorch() {
        let before = unsafe { at_get_autocast_dtype(DEVICE_CUDA) };
        assert_eq!(before, SCALAR_HALF, "libtorch's default CUDA autocast dtype is fp16");
        unsafe { at_set_autocast_dtype(DEVICE_CUDA, SCALAR_BFLOAT16) };
        assert_eq!(unsafe { at_get_autocast_dtype(DEVICE_CUDA) }, SCALAR_BFLOAT16);
        unsafe { at_set_autocast_dtype(DEVICE_CUDA, before) };
        assert_eq!(unsafe { at_get_autocast_dtype(DEVICE_CUDA) }, SCALAR_HALF);
    }
}
