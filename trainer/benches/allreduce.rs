//! Gradient synchronisation across 2 MPI ranks for the parameter shapes of
//! `ofa_tiny`: the bucketed `GradSync` against one all-reduce of a single
//! flat buffer of the same size and against one all-reduce per tensor, in the
//! same run.
//!
//!     cargo bench -p elfin-trainer --bench allreduce [-- --shapes FILE --iters N --bucket-cap-mb MB --nccl]
//!
//! Started without a launcher it re-runs itself under `mpirun -np 2`.
//! `--nccl` (or `ELFIN_BENCH_DEVICE=cuda`) puts the gradients on each rank's
//! GPU and uses NCCL; otherwise they are on the CPU and use MPI.
//! FILE lists `name<TAB>shape<TAB>dtype<TAB>file` per tensor (the oracle's
//! `state_dict_keys.txt`); the float32 parameters are used, without BatchNorm
//! running statistics and aliases (a tied weight is one parameter).

use anyhow::{bail, Context, Result};
use elfin_trainer::dist::{DdpBackend, DistArgs, GradSync, ProcessGroup, World};
use mpi::collective::SystemOperation;
use mpi::traits::*;
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const DEFAULT_SHAPES: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/oracles/model-ofa-tiny/state_dict_keys.txt");

struct Options {
    shapes: String,
    iters: usize,
    bucket_cap_mb: f64,
    nccl: bool,
}

fn options() -> Result<Options> {
    let nccl = std::env::var("ELFIN_BENCH_DEVICE").is_ok_and(|d| d == "cuda");
    let mut o = Options { shapes: DEFAULT_SHAPES.into(), iters: 10, bucket_cap_mb: 25.0, nccl };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--shapes" => o.shapes = value()?,
            "--iters" => o.iters = value()?.parse()?,
            "--bucket-cap-mb" => o.bucket_cap_mb = value()?.parse()?,
            "--nccl" => o.nccl = true,
            "--bench" => {}
            other => bail!("unknown argument {other}; expected --shapes FILE, --iters N, --bucket-cap-mb MB, --nccl"),
        }
    }
    Ok(o)
}

fn parameter_shapes(path: &str) -> Result<Vec<(String, Vec<i64>)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the parameter list {path}"))?;
    let mut shapes = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        let [name, shape, dtype, file] = cols[..] else {
            bail!("{path}:{}: expected 4 tab-separated columns", line_no + 1)
        };
        let buffer = ["running_mean", "running_var", ".version"].iter().any(|s| name.ends_with(s));
        if dtype != "float32" || file.starts_with("alias") || buffer {
            continue;
        }
        let dims = if shape == "scalar" {
            vec![]
        } else {
            shape
                .split('x')
                .map(|d| d.parse::<i64>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("{path}:{}: shape {shape}", line_no + 1))?
        };
        shapes.push((name.to_string(), dims));
    }
    Ok(shapes)
}

/// Runs `f` once with every rank starting together; the time of the slowest rank.
fn timed(pg: &ProcessGroup, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    pg.barrier()?;
    let start = Instant::now();
    f()?;
    let nanos = start.elapsed().as_nanos() as u64;
    Ok(*pg.all_gather_u64(&[nanos])?.iter().max().expect("one rank at least") as f64 / 1e9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(world: &World) -> Result<()> {
    let o = options()?;
    let (device, backend) = if o.nccl {
        (Device::Cuda(world.local_gpu().context("--nccl needs a usable CUDA device")?), DdpBackend::Nccl)
    } else {
        (Device::Cpu, DdpBackend::Mpi)
    };
    let pg = ProcessGroup::new(world, &DistArgs { ddp_backend: backend, ..DistArgs::default() }, device)?;
    let shapes = parameter_shapes(&o.shapes)?;
    let params: Vec<(String, Tensor)> = shapes
        .iter()
        .map(|(n, s)| (n.clone(), Tensor::zeros(s.as_slice(), (Kind::Float, device)).set_requires_grad(true)))
        .collect();
    // One backward gives every parameter a gradient of ones.
    params.iter().map(|(_, p)| p.sum(Kind::Float)).reduce(|a, b| a + b).context("no parameters")?.backward();
    let numel: i64 = params.iter().map(|(_, p)| p.numel() as i64).sum();
    // The baseline: one call on one flat buffer (straight through rsmpi on
    // the CPU; one NCCL call on the GPU).
    let flat_send = vec![1.0f32; if o.nccl { 0 } else { numel as usize }];
    let mut flat_recv = flat_send.clone();
    let mut flat_gpu = Tensor::ones([if o.nccl { numel } else { 0 }], (Kind::Float, device));
    let mpi_world = mpi::topology::SimpleCommunicator::world();
    let mut flat_all_reduce = || -> Result<()> {
        if o.nccl {
            pg.all_reduce_sum(&mut flat_gpu)?;
            let _ = flat_gpu.fill_(1.0);
            pg.wait()
        } else {
            mpi_world.all_reduce_into(&flat_send[..], &mut flat_recv[..], SystemOperation::sum());
            Ok(())
        }
    };
    let mut sync = GradSync::new(
        params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect(),
        (o.bucket_cap_mb * 1e6) as usize,
    )?;
    let mut grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).collect();
    if world.is_main() {
        println!(
            "{} ranks ({:?}), {} tensors, {numel} floats ({:.1} MB), {} buckets of <= {} MB, {} iterations",
            world.size,
            pg.backend(),
            params.len(),
            numel as f64 * 4e-6,
            sync.num_buckets(),
            o.bucket_cap_mb,
            o.iters
        );
    }
    let mut times = vec![Vec::new(); 4];
    for iter in 0..o.iters + 2 {
        let t = [
            timed(&pg, &mut flat_all_reduce)?,
            timed(&pg, &mut || sync.sync_sum(&pg))?,
            // Divided by the world size the gradients stay ones.
            timed(&pg, &mut || sync.sync(&pg, world.size as f64))?,
            timed(&pg, &mut || {
                grads.iter_mut().try_for_each(|g| pg.all_reduce_sum(g))?;
                pg.wait()
            })?,
        ];
        if iter >= 2 {
            times.iter_mut().zip(t).for_each(|(v, t)| v.push(t));
        }
        // The per-tensor sums doubled the gradients (bucket views after the
        // first sync); back to ones so that values stay finite.
        for g in &mut grads {
            let _ = g.fill_(1.0);
        }
    }
    let [flat_s, sum_s, sync_s, per_tensor_s] = [0, 1, 2, 3].map(|i| median(times[i].clone()));
    if world.is_main() {
        let gb = numel as f64 * 4e-9;
        for (what, s) in [
            ("one flat all-reduce", flat_s),
            ("bucketed, GradSync::sync_sum", sum_s),
            ("bucketed, GradSync::sync", sync_s),
            ("one all-reduce per tensor", per_tensor_s),
        ] {
            println!("{what:<30} {:>9.1} ms  {:>6.2} GB/s  {:>5.2}x flat", s * 1e3, gb / s, s / flat_s);
        }
        println!(
            "result: {:?} bucketed sum / flat = {:.2} (goal <= 1.1); per-tensor / bucketed sum = {:.2} (goal >= 3)",
            pg.backend(),
            sum_s / flat_s,
            per_tensor_s / sum_s
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].iter().any(|v| std::env::var_os(v).is_some());
    if !launched {
        let exe = std::env::current_exe()?;
        let status = Command::new("mpirun")
            .args(["-np", "2", "--oversubscribe", "-x", "OMP_NUM_THREADS=1"])
            .arg(exe)
            .args(std::env::args().skip(1))
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .status()
            .context("starting mpirun (is Open MPI or MPICH installed?)")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let world = World::init()?;
    let result = bench(&world);
    world.finish(result)
}
