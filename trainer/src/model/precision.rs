//! Mixed precision: fp32, CUDA autocast to fp16 or bf16, or CPU autocast to
//! bf16 (oneDNN runs bf16 convolutions and matrix products natively on
//! processors with AVX512-BF16 or AMX).
//!
//! tch's `autocast` always uses libtorch's default CUDA autocast dtype
//! (fp16), exposes no way to pick bf16 and does nothing without CUDA, so we
//! call libtorch's own `at::autocast` setters, which every libtorch 2.x
//! exports.

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
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
const SCALAR_HALF: i8 = 5;
const SCALAR_BFLOAT16: i8 = 15;

extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device_type: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_get_autocast_dtype(device_type: i8) -> i8;
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device_type: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device_type: i8) -> bool;
}

impl Precision {
    /// Runs `f` under this precision's autocast on `device`. Reduced
    /// precision needs a CUDA device, except bf16, which also runs on the
    /// CPU; the caller checks (see [`Precision::check`]).
    pub fn run<T>(self, device: Device, f: impl FnOnce() -> T) -> T {
        let dtype = match self {
            Precision::Fp32 => return f(),
            Precision::Fp16 if device.is_cuda() => SCALAR_HALF,
            Precision::Bf16 => SCALAR_BFLOAT16,
            Precision::Fp16 => return f(),
        };
        let device_type = if device.is_cuda() { DEVICE_CUDA } else { DEVICE_CPU };
        // SAFETY: plain setters of thread-local libtorch settings, with enum
        // values of the declared C++ types; the nesting count tells libtorch
        // when to drop its cache of casted weights.
        unsafe {
            let previous = (at_get_autocast_dtype(device_type), at_is_autocast_enabled(device_type));
            at_set_autocast_dtype(device_type, dtype);
            at_set_autocast_enabled(device_type, true);
            torch_sys::at_autocast_increment_nesting();
            let result = f();
            if torch_sys::at_autocast_decrement_nesting() == 0 {
                torch_sys::at_autocast_clear_cache();
            }
            at_set_autocast_enabled(device_type, previous.1);
            at_set_autocast_dtype(device_type, previous.0);
            result
        }
    }

    /// An error message when this precision cannot run on `device`.
    pub fn check(self, device: Device) -> anyhow::Result<()> {
        if self == Precision::Fp16 && !device.is_cuda() {
            anyhow::bail!("--precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU");
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

    /// `--bf16 --device cpu`: matrix products run in bf16 inside the
    /// closure, and in float32 again after it.
    #[test]
    fn bf16_autocast_runs_on_the_cpu_only_inside_the_closure() {
        use tch::{Kind, Tensor};
        let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([3, 4], (Kind::Float, Device::Cpu));
        assert_eq!(Precision::Bf16.run(Device::Cpu, || x.mm(&w)).kind(), Kind::BFloat16);
        assert_eq!(x.mm(&w).kind(), Kind::Float);
        assert_eq!(Precision::Fp32.run(Device::Cpu, || x.mm(&w)).kind(), Kind::Float);
        assert!(Precision::Bf16.check(Device::Cpu).is_ok());
        assert!(Precision::Fp16.check(Device::Cpu).is_err());
    }
}
