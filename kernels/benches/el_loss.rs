//! Forward + backward of the encouraging loss for N = 2048 target tokens over
//! V = 59457 (label smoothing 0.1, log_end 0.75): the fused implementation
//! against the tch-ops reference, in one run.
//!
//!   cargo bench -p elfin-kernels --bench el_loss            # CPU: time ratio and peak extra memory
//!   cargo bench -p elfin-kernels --bench el_loss -- --gpu   # CUDA: time ratio, bandwidth vs a D2D copy
//!
//! Peak extra memory is measured in a child process per implementation: the
//! child makes the inputs, resets its peak RSS (/proc/self/clear_refs), runs
//! the loss once and reports VmHWM minus the RSS it started from.

use elfin_kernels::{encouraging_loss, ElBatch, ElImpl, ElOptions};
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const N: i64 = 2048;
const V: i64 = 59457;

fn options() -> ElOptions {
    ElOptions { label_smoothing: 0.1, log_end: 0.75, ..ElOptions::default() }
}

fn inputs(device: Device, kind: Kind) -> (Tensor, Tensor) {
    tch::manual_seed(0);
    let logits = (Tensor::randn([16, N / 16, V], (Kind::Float, device)) * 3.0).to_kind(kind);
    // Ids from 3 up: no padding, every token is kept.
    let target = Tensor::randint_low(3, V, [16, N / 16], (Kind::Int64, device));
    (logits, target)
}

fn run(imp: ElImpl, logits: &Tensor, target: &Tensor) -> f64 {
    let batch = ElBatch { logits, target, conf: None, constraint_masks: None, update_num: 0 };
    encouraging_loss(&options(), &batch, imp).expect("the loss runs").loss
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// In a child: peak extra resident memory (bytes) of one forward + backward.
fn child(imp: ElImpl) {
    let (logits, target) = inputs(Device::Cpu, Kind::Float);
    run(imp, &logits.narrow(1, 0, 1), &target.narrow(1, 0, 1)); // warm up libtorch and rayon
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS (/proc/self/clear_refs)");
    let before = status_kb("VmRSS:");
    run(imp, &logits, &target);
    println!("{}", (status_kb("VmHWM:").saturating_sub(before)) * 1024);
}

fn peak_extra(imp: &str) -> f64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--child", imp])
        .output()
        .expect("re-running the bench as a child");
    assert!(out.status.success(), "child {imp}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("child prints bytes")
}

fn time_it(reps: usize, sync: impl Fn(), mut f: impl FnMut()) -> f64 {
    f();
    sync();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    sync();
    start.elapsed().as_secs_f64() / reps as f64
}

fn cpu() {
    let (logits, target) = inputs(Device::Cpu, Kind::Float);
    let buffer = (N * V * 4) as f64;
    let fused = time_it(
        3,
        || {},
        || {
            run(ElImpl::Fused, &logits, &target);
        },
    );
    let reference = time_it(
        2,
        || {},
        || {
            run(ElImpl::Reference, &logits, &target);
        },
    );
    let (loss_f, loss_r) = (run(ElImpl::Fused, &logits, &target), run(ElImpl::Reference, &logits, &target));
    let (mem_f, mem_r) = (peak_extra("fused"), peak_extra("reference"));
    println!(
        "CPU, N = {N}, V = {V}, {} threads (rayon) / {} (libtorch)",
        rayon::current_num_threads(),
        tch::get_num_threads()
    );
    println!("  loss: fused {loss_f:.4}, reference {loss_r:.4}");
    println!("  time: fused {:.3} s, reference {:.3} s, reference/fused = {:.2}x", fused, reference, reference / fused);
    println!(
        "  peak extra memory: fused {:.0} MB ({:.2} x one N×V f32 buffer of {:.0} MB), reference {:.0} MB ({:.2} x)",
        mem_f / 1e6,
        mem_f / buffer,
        buffer / 1e6,
        mem_r / 1e6,
        mem_r / buffer
    );
}

fn gpu() {
    assert!(elfin_kernels::cuda_probe::cuda_usable(), "--gpu needs a CUDA device");
    let device = Device::Cuda(0);
    let sync = || tch::Cuda::synchronize(0);
    for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
        let (logits, target) = inputs(device, kind);
        let elem = logits.kind().elt_size_in_bytes() as f64;
        let bytes = (N * V) as f64 * elem * 2.0; // logits read once + gradient written once
        let fused = time_it(10, sync, || {
            run(ElImpl::Fused, &logits, &target);
        });
        let reference = time_it(3, sync, || {
            run(ElImpl::Reference, &logits, &target);
        });
        let mut dst = logits.empty_like();
        let copy = time_it(10, sync, || {
            dst.copy_(&logits);
        });
        let (bw_fused, bw_copy) = (bytes / fused, bytes / copy);
        println!("CUDA {kind:?}, N = {N}, V = {V}");
        println!(
            "  time: fused {:.3} ms, reference {:.3} ms, reference/fused = {:.2}x",
            fused * 1e3,
            reference * 1e3,
            reference / fused
        );
        println!(
            "  effective bandwidth: fused {:.0} GB/s, device-to-device copy {:.0} GB/s, fused/copy = {:.0}%",
            bw_fused / 1e9,
            bw_copy / 1e9,
            100.0 * bw_fused / bw_copy
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(if args[i + 1] == "fused" { ElImpl::Fused } else { ElImpl::Reference });
    } else if args.iter().any(|a| a == "--gpu") {
        gpu();
    } else {
        cpu();
    }
}
