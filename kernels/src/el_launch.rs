//! The host side of the fused kernels of `el_kernel.cu`, shared by the CUDA
//! launcher (el_cuda.rs) and the CPU emulation (el_emulated.rs): the launch
//! geometry, the argument lists in the kernels' order, and the plan between
//! the two kernels. A launcher only moves the arguments to a kernel.

use crate::el_input::{check, ElBatch};
use crate::el_options::{ElError, ElOptions, ElOutput};
use crate::el_plan::{output, plan, PassConsts, RowStats, RowSums};
use tch::{Device, Kind, Tensor};

/// Threads per block on the GPU (the `BLOCK` of el_kernel.cu's launch bounds).
pub const BLOCK: u32 = 1024;

/// One kernel argument, as the kernel's parameter list types it.
#[derive(Clone, Copy, Debug)]
pub enum KernelArg {
    /// A device pointer (0: none).
    Ptr(u64),
    I64(i64),
    I32(i32),
    F32(f32),
}

/// Grid and block of a one-dimensional launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: u32,
    pub block: u32,
}

/// One block per row: `el_stats_*` gets one per candidate row, `el_rows_*` one per row of the batch.
/// The block is a whole number of warps, at most 1024 threads (the kernel's reductions need both).
pub fn launch_dims(rows: usize, block: u32) -> Result<LaunchDims, ElError> {
    if block == 0 || !block.is_multiple_of(32) || block > BLOCK {
        return Err(ElError::InvalidInput(format!(
            "a block of {block} threads: it must be a multiple of 32 up to {BLOCK}"
        )));
    }
    let grid =
        u32::try_from(rows).map_err(|_| ElError::InvalidInput(format!("{rows} rows exceed a one-dimensional grid")))?;
    Ok(LaunchDims { grid, block })
}

/// Runs one kernel of el_kernel.cu to completion (or at least orders it
/// before any later read of its outputs from the host).
pub trait Launcher {
    /// `name`: `el_stats_{f32,f16,bf16}` or `el_rows_{...}`.
    fn launch(&self, name: &str, dims: LaunchDims, args: &[KernelArg]) -> Result<(), ElError>;
}

fn ptr(t: &Tensor) -> KernelArg {
    KernelArg::Ptr(t.data_ptr() as u64)
}

/// The fused loss with `launcher` running the kernels on the logits' device, `block` threads per block.
pub fn forward_backward(
    opts: &ElOptions,
    batch: &ElBatch,
    launcher: &dyn Launcher,
    block: u32,
) -> Result<ElOutput, ElError> {
    let checked = check(opts, batch)?;
    let (b, t, v) = (checked.b, checked.t, checked.v);
    let device = batch.logits.device();
    let dtype = match batch.logits.kind() {
        Kind::Float => "f32",
        Kind::Half => "f16",
        _ => "bf16",
    };
    let logits = batch.logits.contiguous();
    let masks = batch.constraint_masks.map(|m| {
        let m = m.to_device(device);
        if m.kind() == Kind::Bool {
            m.contiguous()
        } else {
            m.to_kind(Kind::Uint8).contiguous()
        }
    });
    let masks_ptr = masks.as_ref().map_or(KernelArg::Ptr(0), ptr);
    let (range_start, range_end) = opts.constraint_range.map_or((-1i32, -1i32), |(s, e)| (s as i32, e as i32));
    let (range_start, range_end) = (KernelArg::I32(range_start), KernelArg::I32(range_end));
    let v_arg = KernelArg::I64(v as i64);
    let n = checked.candidates.len();

    let stats: Vec<RowStats> = if n == 0 {
        Vec::new()
    } else {
        let rows =
            Tensor::from_slice(&checked.candidates.iter().map(|&r| r as i64).collect::<Vec<_>>()).to_device(device);
        let targets = Tensor::from_slice(&checked.candidates.iter().map(|&r| checked.target[r]).collect::<Vec<_>>())
            .to_device(device);
        let out = Tensor::zeros([n as i64, 6], (Kind::Double, device));
        let args = [ptr(&logits), v_arg, ptr(&rows), ptr(&targets), masks_ptr, range_start, range_end, ptr(&out)];
        launcher.launch(&format!("el_stats_{dtype}"), launch_dims(n, block)?, &args)?;
        // The copy waits for the kernel; the tensors it reads live until the end of the block.
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
        let bonus = consts.bonus;
        let args = [
            ptr(&logits),
            ptr(&grad),
            v_arg,
            ptr(&job_of_row),
            ptr(&jobs_f),
            ptr(&jobs_i),
            masks_ptr,
            range_start,
            range_end,
            KernelArg::F32(consts.eps),
            KernelArg::F32(consts.eps_over_v),
            KernelArg::F32(bonus.log_end),
            KernelArg::I32(bonus.full as i32),
            KernelArg::F32(bonus.slope),
            KernelArg::F32(bonus.at_end),
            KernelArg::F32(consts.half_alpha),
            ptr(&out),
        ];
        launcher.launch(&format!("el_rows_{dtype}"), launch_dims(b * t, block)?, &args)?;
        let host = Vec::<f64>::try_from(out.to_device(Device::Cpu).reshape([-1]))?;
        for (s, h) in sums.iter_mut().zip(host.chunks_exact(2)) {
            *s = RowSums { bonus_all: h[0], kl: h[1] };
        }
    }
    Ok(output(opts, &checked, &plan, &sums, grad))
}
