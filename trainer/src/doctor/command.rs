//! `elfin-train doctor`: what this machine gives elfin, one PASS/FAIL/SKIP
//! line per check. Alone it checks this process's libraries and devices;
//! `--collectives`, under mpirun with several ranks, checks the collectives
//! of the job and measures their all-reduce bus bandwidth (rank 0 reports).
//! `elfin doctor` runs both and adds what needs no libtorch.

use super::report::{Check, Report};
use super::{collectives, kernel_check};
use crate::dist::{DdpBackend, DistArgs, ProcessGroup, World};
use anyhow::{bail, Result};
use elfin_kernels::{cuda_probe, el_cuda, ElOptions};
use tch::{Device, Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Print one JSON object ({"checks": [{"check", "status", "detail", "fix"}]}) instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Check the collectives of this job (start it under mpirun with several ranks) and measure the
    /// all-reduce bus bandwidth, instead of the local checks.
    #[arg(long)]
    pub collectives: bool,
    /// Where the collectives run: `auto` on this rank's GPU (NCCL) when CUDA is usable, `cpu` over MPI.
    #[arg(long, value_enum, default_value_t = CollectivesDevice::Auto)]
    pub device: CollectivesDevice,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectivesDevice {
    Auto,
    Cpu,
}

pub fn run(args: DoctorArgs) -> Result<()> {
    let report = if args.collectives {
        let world = World::init()?;
        let result = collectives_checks(&world, args.device);
        let report = world.finish(result)?;
        if !world.is_main() {
            return Ok(());
        }
        report
    } else {
        Report { checks: local_checks() }
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    if report.failed() {
        bail!("some checks failed (the FAIL lines say what to do)");
    }
    Ok(())
}

const GIB: f64 = (1u64 << 30) as f64;

fn local_checks() -> Vec<Check> {
    let mut checks = vec![Check::pass(
        "elfin-train",
        format!("{}, libtorch {} (tch 0.24.0)", env!("CARGO_PKG_VERSION"), env!("ELFIN_LIBTORCH_VERSION")),
    )];
    checks.push(match mpi::environment::library_version() {
        Ok(v) => Check::pass(
            "MPI",
            v.lines().next().unwrap_or("").trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string(),
        ),
        Err(code) => Check::fail(
            "MPI",
            format!("no MPI library version (error {code})"),
            "install Open MPI (scripts/setup.sh does)",
        ),
    });
    let devices = cuda_devices(&mut checks);
    checks.push(nccl_check(devices.is_empty()));
    checks.extend(nvrtc_checks(&devices));
    checks.push(fused_loss_check("fused loss on CPU", Device::Cpu, Kind::Float));
    for &(ordinal, _) in &devices {
        for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
            checks.push(fused_loss_check(
                &format!("fused loss kernel cuda:{ordinal} {kind:?}"),
                Device::Cuda(ordinal),
                kind,
            ));
        }
    }
    checks
}

/// The CUDA driver and each device (name, compute capability, memory); returns (ordinal, capability).
fn cuda_devices(checks: &mut Vec<Check>) -> Vec<(usize, (i32, i32))> {
    // cudarc panics when libcuda is absent: ask first.
    if !cuda_probe::driver_available() {
        checks.push(Check::skip("CUDA", "libcuda not found (no NVIDIA driver): the GPU checks are skipped"));
        return Vec::new();
    }
    let mut version = 0;
    // SAFETY: libcuda loads (checked above); the call writes one int.
    let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    let driver = if rc == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        format!("driver API {}.{}", version / 1000, version % 1000 / 10)
    } else {
        format!("driver version unknown ({rc:?})")
    };
    let count = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    if count == 0 {
        checks.push(Check::fail(
            "CUDA",
            format!("libcuda loads ({driver}) but libtorch sees no device"),
            "check nvidia-smi and CUDA_VISIBLE_DEVICES, and that torch is a CUDA build (torch.cuda.is_available())",
        ));
        return Vec::new();
    }
    checks
        .push(Check::pass("CUDA", format!("{driver}; {count} device(s); libtorch {}", env!("ELFIN_LIBTORCH_VERSION"))));
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let name = format!("device cuda:{ordinal}");
        let described = cudarc::driver::CudaContext::new(ordinal)
            .and_then(|ctx| Ok((ctx.name()?, ctx.compute_capability()?, ctx.total_mem()?)));
        match described {
            Ok((dev, cc, mem)) => {
                checks.push(Check::pass(
                    &name,
                    format!("{dev}, compute capability {}.{}, {:.1} GiB", cc.0, cc.1, mem as f64 / GIB),
                ));
                devices.push((ordinal, cc));
            }
            Err(e) => checks.push(Check::fail(
                &name,
                format!("cannot open: {e}"),
                "check nvidia-smi for this GPU (Xid errors, ECC, a hung process)",
            )),
        }
    }
    devices
}

fn nccl_check(no_gpu: bool) -> Check {
    match (cuda_probe::nccl_available(), no_gpu) {
        (true, _) => match crate::dist::nccl_version() {
            Ok(v) => Check::pass("NCCL", v),
            Err(e) => Check::fail(
                "NCCL",
                format!("{e:#}"),
                "install NCCL 2 (the torch CUDA wheel's nvidia-nccl) or train with --ddp-backend mpi",
            ),
        },
        (false, true) => Check::skip("NCCL", "libnccl not found; it matters only with GPUs"),
        (false, false) => Check::fail(
            "NCCL",
            "libnccl.so.2 not found",
            "install NCCL 2 (the torch CUDA wheel's nvidia-nccl, or libnccl2) or train with --ddp-backend mpi",
        ),
    }
}

/// The kernel source through NVRTC: once for the default architecture, then for each device's.
fn nvrtc_checks(devices: &[(usize, (i32, i32))]) -> Vec<Check> {
    if !el_cuda::ensure_nvrtc_loaded() {
        return vec![if devices.is_empty() {
            Check::skip("NVRTC", "libnvrtc not found; it matters only with GPUs")
        } else {
            Check::fail(
                "NVRTC",
                "libnvrtc.so.13 not found",
                "install the CUDA build of torch 2.11, whose wheel ships nvidia/cu13/lib/libnvrtc.so.13",
            )
        }];
    }
    let fix = "report it with this output: el_kernel.cu does not compile with this NVRTC; --criterion-impl reference trains without it";
    let mut checks = vec![match el_cuda::compile_ptx() {
        Ok(ptx) => Check::pass("NVRTC", format!("el_kernel.cu compiles ({} bytes of PTX)", ptx.to_src().len())),
        Err(e) => Check::fail("NVRTC", e.to_string(), fix),
    }];
    for &(ordinal, (major, minor)) in devices {
        // cudarc takes the architecture as a static string; a doctor run compiles a handful.
        let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
        let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), ..Default::default() };
        let name = format!("NVRTC cuda:{ordinal}");
        checks.push(match cudarc::nvrtc::compile_ptx_with_opts(el_cuda::KERNEL_SOURCE, opts) {
            Ok(_) => Check::pass(&name, format!("el_kernel.cu compiles for {arch}")),
            Err(e) => Check::fail(&name, format!("NVRTC for {arch}: {e}"), fix),
        });
    }
    checks
}

/// The fused loss against the reference on random logits (vocabulary 4099: no multiple of a block).
fn fused_loss_check(name: &str, device: Device, kind: Kind) -> Check {
    tch::manual_seed(0);
    let (b, t, v) = (4, 16, 4099);
    let logits = (Tensor::randn([b, t, v], (Kind::Float, device)) * 3.0).to_kind(kind);
    let target = Tensor::randint_low(3, v, [b, t], (Kind::Int64, device));
    let _ = target.narrow(1, 12, 4).fill_(1);
    let opts = ElOptions { label_smoothing: 0.1, report_accuracy: true, ..ElOptions::default() };
    let fix = "the fused loss is wrong here: training falls back to the reference by itself (--criterion-impl auto); report this output";
    match kernel_check::check(&opts, &logits, &target, 0, kernel_check::corrupt_requested(0)) {
        Ok(Ok(summary)) => Check::pass(name, summary),
        Ok(Err(difference)) => Check::fail(name, difference, fix),
        Err(e) => Check::fail(name, format!("{e:#}"), fix),
    }
}

/// Rank 0's lines for the collectives of this job.
fn collectives_checks(world: &World, device: CollectivesDevice) -> Result<Report> {
    let device = match (device, world.local_gpu()) {
        (CollectivesDevice::Auto, Some(gpu)) => Device::Cuda(gpu),
        _ => Device::Cpu,
    };
    if world.size < 2 {
        return Ok(Report {
            checks: vec![Check::skip(
                "collectives",
                "one rank: start `elfin-train doctor --collectives` under mpirun -np N",
            )],
        });
    }
    let pg = ProcessGroup::new(world, &DistArgs { ddp_backend: DdpBackend::Auto, ..DistArgs::default() }, device)?;
    let name = format!("collectives {} ranks {device:?}", world.size);
    let fix = "run `elfin doctor` on each node; check the network between them (Open MPI: --mca btl_tcp_if_include; NCCL: NCCL_DEBUG=INFO)";
    let mut checks = vec![match collectives::check(&pg, device, |_| {}) {
        Ok(summary) => Check::pass(&name, summary),
        Err(e) => Check::fail(&name, format!("{e:#}"), fix),
    }];
    let bytes = if device == Device::Cpu { 16 << 20 } else { 256 << 20 };
    let bw = collectives::all_reduce_bus_bandwidth(&pg, device, bytes, 5)?;
    checks.push(Check::pass(
        &format!("all-reduce bandwidth {} ranks {device:?}", world.size),
        format!("{bw:.2} GB/s bus bandwidth ({} MiB of f32, {:?}, best of 5)", bytes >> 20, pg.backend()),
    ));
    drop(pg);
    Ok(Report { checks })
}
