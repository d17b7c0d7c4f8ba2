//! The fused CUDA implementation: `el_kernel.cu` compiled at run time with
//! NVRTC, launched through cudarc on the legacy NULL stream, which libtorch
//! also uses, so the kernels are ordered with libtorch's own work. All
//! buffers are tch tensors; the kernels see their device pointers.

use crate::el_input::ElBatch;
use crate::el_launch::{self, KernelArg, LaunchDims, Launcher, BLOCK};
use crate::el_options::{ElError, ElOptions, ElOutput};
use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tch::Device;

/// The CUDA C source of the kernels.
pub const KERNEL_SOURCE: &str = include_str!("el_kernel.cu");
const DTYPES: [&str; 3] = ["f32", "f16", "bf16"];

fn cuda_err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> ElError + '_ {
    move |e| ElError::Cuda(format!("{what}: {e}"))
}

/// Makes libnvrtc (and the libnvrtc-builtins it opens at compile time)
/// loadable by name for cudarc: the torch wheel keeps them beside libcudart
/// (nvidia/cu13/lib), which is not on the loader's search path.
/// Returns false when no libnvrtc can be found.
pub fn ensure_nvrtc_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let dlopen = |path: &str| {
            let Ok(c) = std::ffi::CString::new(path) else { return false };
            // SAFETY: dlopen with a valid C string; the handle is kept for the process' life.
            !unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null()
        };
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let wheel_dirs: Vec<std::path::PathBuf> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.contains("libcudart.so") || p.contains("libtorch_cuda.so"))
            .filter_map(|p| std::path::Path::new(p).parent().map(|d| d.to_path_buf()))
            .flat_map(|d| [d.clone(), d.join("../../nvidia/cu13/lib")])
            .collect();
        for dir in &wheel_dirs {
            let nvrtc = dir.join("libnvrtc.so.13");
            if nvrtc.exists() {
                // Best effort: NVRTC finds its builtins itself when they are on the search path.
                let _ = dlopen(&dir.join("libnvrtc-builtins.so.13.0").to_string_lossy());
                if dlopen(&nvrtc.to_string_lossy()) {
                    return true;
                }
            }
        }
        dlopen("libnvrtc.so.13") || dlopen("libnvrtc.so")
    })
}

/// Compiles the kernel source to PTX (needs libnvrtc, not a GPU).
pub fn compile_ptx() -> Result<cudarc::nvrtc::Ptx, ElError> {
    if !ensure_nvrtc_loaded() {
        return Err(ElError::Cuda("libnvrtc.so.13 not found (it ships in the torch wheel's nvidia/cu13/lib)".into()));
    }
    cudarc::nvrtc::compile_ptx(KERNEL_SOURCE).map_err(|e| ElError::Cuda(format!("NVRTC compile of el_kernel.cu: {e}")))
}

struct Kernels {
    ctx: Arc<CudaContext>,
    /// By name: el_stats_f32, el_rows_bf16, ...
    functions: HashMap<String, CudaFunction>,
}

fn kernels(ordinal: usize) -> Result<Arc<Kernels>, ElError> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<Kernels>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = cache.get(&ordinal) {
        return Ok(k.clone());
    }
    if !crate::cuda_probe::driver_available() {
        return Err(ElError::Cuda("the CUDA driver (libcuda) cannot be loaded".into()));
    }
    let ctx = CudaContext::new(ordinal).map_err(cuda_err("opening the device's primary context"))?;
    let module = ctx.load_module(compile_ptx()?).map_err(cuda_err("loading the PTX"))?;
    let mut functions = HashMap::new();
    for dt in DTYPES {
        for kernel in ["el_stats", "el_rows"] {
            let name = format!("{kernel}_{dt}");
            let function = module.load_function(&name).map_err(cuda_err(&name))?;
            functions.insert(name, function);
        }
    }
    let k = Arc::new(Kernels { ctx, functions });
    cache.insert(ordinal, k.clone());
    Ok(k)
}

struct CudaLauncher(Arc<Kernels>);

impl Launcher for CudaLauncher {
    fn launch(&self, name: &str, dims: LaunchDims, args: &[KernelArg]) -> Result<(), ElError> {
        let function = self.0.functions.get(name).ok_or_else(|| ElError::Cuda(format!("no kernel {name}")))?;
        let stream = self.0.ctx.default_stream();
        let mut launch = stream.launch_builder(function);
        for arg in args {
            match arg {
                KernelArg::Ptr(p) => launch.arg(p),
                KernelArg::I64(x) => launch.arg(x),
                KernelArg::I32(x) => launch.arg(x),
                KernelArg::F32(x) => launch.arg(x),
            };
        }
        let config = LaunchConfig { grid_dim: (dims.grid, 1, 1), block_dim: (dims.block, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the pointers are live tensors of the shapes and dtypes the kernel reads
        // (el_launch.rs); they outlive the kernel because the caller's copy of the
        // kernel's output to the host waits for the NULL stream.
        unsafe { launch.launch(config) }.map_err(cuda_err(&format!("launching {name}")))?;
        Ok(())
    }
}

pub fn forward_backward(opts: &ElOptions, batch: &ElBatch) -> Result<ElOutput, ElError> {
    let Device::Cuda(ordinal) = batch.logits.device() else {
        return Err(ElError::InvalidInput("the CUDA implementation needs CUDA logits".into()));
    };
    el_launch::forward_backward(opts, batch, &CudaLauncher(kernels(ordinal)?), BLOCK)
}
