//! The fused CUDA implementation: `el_kernel.cu` compiled at run time with
//! NVRTC, launched through cudarc on the legacy NULL stream, which libtorch
//! also uses, so the kernels are ordered with libtorch's own work. All
//! buffers are tch tensors; the kernels see their device pointers.

use crate::el_input::{check, ElBatch};
use crate::el_options::{ElError, ElOptions, ElOutput};
use crate::el_plan::{output, plan, PassConsts, RowStats, RowSums};
use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

/// The CUDA C source of the kernels.
pub const KERNEL_SOURCE: &str = include_str!("el_kernel.cu");
const BLOCK: u32 = 1024;
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
    stats: HashMap<&'static str, CudaFunction>,
    rows: HashMap<&'static str, CudaFunction>,
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
    let mut stats = HashMap::new();
    let mut rows = HashMap::new();
    for dt in DTYPES {
        stats.insert(dt, module.load_function(&format!("el_stats_{dt}")).map_err(cuda_err("el_stats"))?);
        rows.insert(dt, module.load_function(&format!("el_rows_{dt}")).map_err(cuda_err("el_rows"))?);
    }
    let k = Arc::new(Kernels { ctx, stats, rows });
    cache.insert(ordinal, k.clone());
    Ok(k)
}

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

pub fn forward_backward(opts: &ElOptions, batch: &ElBatch) -> Result<ElOutput, ElError> {
    let Device::Cuda(ordinal) = batch.logits.device() else {
        return Err(ElError::InvalidInput("the CUDA implementation needs CUDA logits".into()));
    };
    let checked = check(opts, batch)?;
    let (b, t, v) = (checked.b, checked.t, checked.v);
    let device = batch.logits.device();
    let dtype = match batch.logits.kind() {
        Kind::Float => "f32",
        Kind::Half => "f16",
        _ => "bf16",
    };
    let k = kernels(ordinal)?;
    let stream = k.ctx.default_stream();
    let logits = batch.logits.contiguous();
    let masks = batch.constraint_masks.map(|m| {
        let m = m.to_device(device);
        if m.kind() == Kind::Bool {
            m.contiguous()
        } else {
            m.to_kind(Kind::Uint8).contiguous()
        }
    });
    let masks_ptr = masks.as_ref().map_or(0, ptr);
    let (range_start, range_end) = opts.constraint_range.map_or((-1i32, -1i32), |(s, e)| (s as i32, e as i32));
    let v_i64 = v as i64;
    let n = checked.candidates.len();

    let stats: Vec<RowStats> = if n == 0 {
        Vec::new()
    } else {
        let rows =
            Tensor::from_slice(&checked.candidates.iter().map(|&r| r as i64).collect::<Vec<_>>()).to_device(device);
        let targets = Tensor::from_slice(&checked.candidates.iter().map(|&r| checked.target[r]).collect::<Vec<_>>())
            .to_device(device);
        let out = Tensor::zeros([n as i64, 6], (Kind::Double, device));
        let (lp, rp, tp, op) = (ptr(&logits), ptr(&rows), ptr(&targets), ptr(&out));
        let mut launch = stream.launch_builder(&k.stats[dtype]);
        launch.arg(&lp).arg(&v_i64).arg(&rp).arg(&tp).arg(&masks_ptr).arg(&range_start).arg(&range_end).arg(&op);
        // SAFETY: the pointers are live tensors of the shapes and dtypes the kernel reads; they outlive
        // the kernel because `to_device(Cpu)` below waits for the NULL stream.
        unsafe {
            launch.launch(LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 })
        }
        .map_err(cuda_err("launching el_stats"))?;
        let host = Vec::<f64>::try_from(out.to_device(Device::Cpu).reshape([-1]))?;
        host.chunks_exact(6)
            .map(|s| RowStats {
                max: s[0] as f32,
                sum_exp: s[1],
                sum_logits: s[2],
                allowed: s[3],
                target_logit: s[4] as f32,
                argmax: s[5] as i64,
            })
            .collect()
    };
    let plan = plan(opts, &checked, &stats, masks.is_some(), batch.update_num);
    let consts = PassConsts::new(opts, v);

    let mut job_of_row = vec![-1i32; b * t];
    let mut jobs_f = Vec::with_capacity(plan.jobs.len() * 8);
    let mut jobs_i = Vec::with_capacity(plan.jobs.len() * 3);
    for (idx, job) in plan.jobs.iter().enumerate() {
        job_of_row[job.side.row] = idx as i32;
        let p = job.partner.unwrap_or(job.side);
        jobs_f.extend([
            job.side.max,
            job.side.ln_sum,
            job.side.conf,
            job.eps_row,
            job.allowed,
            p.max,
            p.ln_sum,
            p.conf,
        ]);
        jobs_i.extend([job.side.row as i64, job.target as i64, job.partner.map_or(-1, |p| p.row as i64)]);
    }
    let grad = Tensor::empty([b as i64, t as i64, v as i64], (batch.logits.kind(), device));
    let mut sums = vec![RowSums::default(); plan.jobs.len()];
    if b * t > 0 {
        let job_of_row = Tensor::from_slice(&job_of_row).to_device(device);
        // Empty job lists still need valid pointers.
        jobs_f.resize(jobs_f.len().max(8), 0.0);
        jobs_i.resize(jobs_i.len().max(3), -1);
        let jobs_f = Tensor::from_slice(&jobs_f).to_device(device);
        let jobs_i = Tensor::from_slice(&jobs_i).to_device(device);
        let out = Tensor::zeros([plan.jobs.len().max(1) as i64, 2], (Kind::Double, device));
        let (lp, gp, jr, jf, ji, op) =
            (ptr(&logits), ptr(&grad), ptr(&job_of_row), ptr(&jobs_f), ptr(&jobs_i), ptr(&out));
        let bonus = consts.bonus;
        let full = bonus.full as i32;
        let mut launch = stream.launch_builder(&k.rows[dtype]);
        launch
            .arg(&lp)
            .arg(&gp)
            .arg(&v_i64)
            .arg(&jr)
            .arg(&jf)
            .arg(&ji)
            .arg(&masks_ptr)
            .arg(&range_start)
            .arg(&range_end)
            .arg(&consts.eps)
            .arg(&consts.eps_over_v)
            .arg(&bonus.log_end)
            .arg(&full)
            .arg(&bonus.slope)
            .arg(&bonus.at_end)
            .arg(&consts.half_alpha)
            .arg(&op);
        // SAFETY: as above; the copy to the host waits for the kernel.
        unsafe {
            launch.launch(LaunchConfig {
                grid_dim: ((b * t) as u32, 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(cuda_err("launching el_rows"))?;
        let host = Vec::<f64>::try_from(out.to_device(Device::Cpu).reshape([-1]))?;
        for (s, h) in sums.iter_mut().zip(host.chunks_exact(2)) {
            *s = RowSums { bonus_all: h[0], kl: h[1] };
        }
    }
    Ok(output(opts, &checked, &plan, &sums, grad))
}
