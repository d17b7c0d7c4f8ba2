//! `el_kernel.cu` built as host C++ (kernels/emu, compiled by build.rs) and
//! run on the CPU: the kernel's own source with a CUDA thread per OS thread.
//! It proves the kernel's arithmetic, indexing and reductions where no GPU
//! is; it is slow and for tests only.

use crate::el_input::ElBatch;
use crate::el_launch::{self, KernelArg, LaunchDims, Launcher};
use crate::el_options::{ElError, ElOptions, ElOutput};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Mutex;

extern "C" {
    fn el_emu_launch(name: *const c_char, grid: u32, block: u32, params: *mut *mut c_void) -> c_int;
    fn el_emu_f16_to_f32(h: u16) -> f32;
    fn el_emu_f32_to_f16(v: f32) -> u16;
}

struct Emulator;

impl Launcher for Emulator {
    fn launch(&self, name: &str, dims: LaunchDims, args: &[KernelArg]) -> Result<(), ElError> {
        // The emulation keeps a block's state in globals: one launch at a time in the process.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mut values = args.to_vec();
        let mut params: Vec<*mut c_void> = values
            .iter_mut()
            .map(|a| match a {
                KernelArg::Ptr(p) => p as *mut u64 as *mut c_void,
                KernelArg::I64(x) => x as *mut i64 as *mut c_void,
                KernelArg::I32(x) => x as *mut i32 as *mut c_void,
                KernelArg::F32(x) => x as *mut f32 as *mut c_void,
            })
            .collect();
        let c_name = CString::new(name).map_err(|_| ElError::InvalidInput(format!("kernel name {name:?}")))?;
        // SAFETY: one pointer per kernel parameter, each to a value of the parameter's type, in the
        // kernel's order (el_launch.rs); the device pointers are live host tensors of the shapes the
        // kernel reads. The call returns when every block is done.
        match unsafe { el_emu_launch(c_name.as_ptr(), dims.grid, dims.block, params.as_mut_ptr()) } {
            0 => Ok(()),
            1 => Err(ElError::InvalidInput(format!(
                "{name}: a block of {} threads is not a whole number of warps",
                dims.block
            ))),
            _ => Err(ElError::InvalidInput(format!("no emulated kernel {name}"))),
        }
    }
}

/// The fused loss by the emulated kernel on CPU logits, `block` threads per block (a multiple of 32).
pub fn forward_backward(opts: &ElOptions, batch: &ElBatch, block: u32) -> Result<ElOutput, ElError> {
    if batch.logits.device() != tch::Device::Cpu {
        return Err(ElError::InvalidInput("the emulated kernel needs CPU logits".into()));
    }
    el_launch::forward_backward(opts, batch, &Emulator, block)
}

/// The kernel's float16 → float32 conversion as the host build does it.
pub fn f16_to_f32(bits: u16) -> f32 {
    // SAFETY: a pure function of its argument.
    unsafe { el_emu_f16_to_f32(bits) }
}

/// The kernel's float32 → float16 conversion (round to nearest even) as the host build does it.
pub fn f32_to_f16(v: f32) -> u16 {
    // SAFETY: a pure function of its argument.
    unsafe { el_emu_f32_to_f16(v) }
}
