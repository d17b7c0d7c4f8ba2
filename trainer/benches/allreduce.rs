//! Gradient synchronisation across 2 MPI ranks for the parameter shapes of
//! `ofa_tiny`: the bucketed `GradSync` against one all-reduce of a single
//! flat buffer of the same size and against one all-reduce per tensor, in the
//! same run, then `GradSync` with bucket sizes swept over `--sweep-mb`.
//!
//!     cargo bench -p elfin-trainer --bench allreduce [-- --shapes FILE --iters N --bucket-cap-mb MB
//!         --sweep-mb 1,2,5,10,25,50,100 --link-rate-gbit G --nccl]
//!
//! Started without a launcher it re-runs itself under `mpirun -np 2`, over
//! the hosts of `$ELFIN_HOSTFILE` when that is set (one rank per host, as
//! `scripts/local-cluster.sh run` sets it: see docs/performance.md). It also
//! measures the latency between rank 0 and rank 1 (a 4-byte ping-pong), and,
//! given the link's rate, says what share of it the all-reduces achieved.
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
    sweep_mb: Vec<f64>,
    link_rate_gbit: Option<f64>,
    nccl: bool,
}

fn options() -> Result<Options> {
    let nccl = std::env::var("ELFIN_BENCH_DEVICE").is_ok_and(|d| d == "cuda");
    let sweep_mb = vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0];
    let mut o =
        Options { shapes: DEFAULT_SHAPES.into(), iters: 10, bucket_cap_mb: 25.0, sweep_mb, link_rate_gbit: None, nccl };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--shapes" => o.shapes = value()?,
            "--iters" => o.iters = value()?.parse()?,
            "--bucket-cap-mb" => o.bucket_cap_mb = value()?.parse()?,
            "--sweep-mb" => {
                let list = value()?;
                o.sweep_mb = list
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--sweep-mb {list}: expected sizes in MB separated by commas"))?;
            }
            "--link-rate-gbit" => o.link_rate_gbit = Some(value()?.parse()?),
            "--nccl" => o.nccl = true,
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; expected --shapes FILE, --iters N, --bucket-cap-mb MB, --sweep-mb LIST, \
                 --link-rate-gbit G, --nccl"
            ),
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

/// Median one-way latency between ranks 0 and 1 in seconds: half the round trip of 4 bytes.
fn latency(world: &mpi::topology::SimpleCommunicator) -> f64 {
    let mut x = [0f32];
    let mut rtts = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        match world.rank() {
            0 => {
                world.process_at_rank(1).send(&x[..]);
                world.process_at_rank(1).receive_into(&mut x[..]);
            }
            1 => {
                world.process_at_rank(0).receive_into(&mut x[..]);
                world.process_at_rank(0).send(&x[..]);
            }
            _ => {}
        }
        rtts.push(start.elapsed().as_secs_f64());
    }
    median(rtts) / 2.0
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
    let bucketed = |mb: f64| {
        GradSync::new(params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect(), (mb * 1e6) as usize)
    };
    let mut sync = bucketed(o.bucket_cap_mb)?;
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
    drop(sync);
    let mut sweep = Vec::new();
    for &mb in &o.sweep_mb {
        let mut sync = bucketed(mb)?;
        let mut t = Vec::new();
        for iter in 0..o.iters + 1 {
            let s = timed(&pg, &mut || sync.sync_sum(&pg))?;
            if iter >= 1 {
                t.push(s);
            }
            params.iter().for_each(|(_, p)| drop(p.grad().fill_(1.0)));
        }
        sweep.push((mb, sync.num_buckets(), median(t)));
    }
    let one_way = latency(&mpi_world);
    if world.is_main() {
        let gb = numel as f64 * 4e-9;
        // With 2 ranks an all-reduce moves the whole buffer each way once.
        let of_link = |s: f64| match o.link_rate_gbit {
            Some(rate) => format!("  {:>5.1}% of the {rate} Gbit/s link", gb * 8.0 / s / rate * 100.0),
            None => String::new(),
        };
        let row = |what: &str, s: f64| {
            println!("{what:<34} {:>9.1} ms  {:>6.2} GB/s  {:>5.2}x flat{}", s * 1e3, gb / s, s / flat_s, of_link(s));
        };
        row("one flat all-reduce", flat_s);
        row("bucketed, GradSync::sync_sum", sum_s);
        row("bucketed, GradSync::sync", sync_s);
        row("one all-reduce per tensor", per_tensor_s);
        for &(mb, buckets, s) in &sweep {
            row(&format!("sweep: {mb} MB buckets ({buckets}), sync_sum"), s);
        }
        println!("latency rank 0 <-> rank 1: {:.1} us one way (half the median round trip of 4 bytes)", one_way * 1e6);
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
        let mut mpirun = Command::new("mpirun");
        mpirun.args(["-np", "2", "--oversubscribe", "-x", "OMP_NUM_THREADS=1"]);
        if let Ok(hostfile) = std::env::var("ELFIN_HOSTFILE") {
            // Unbound: nodes emulated on one machine would pin both ranks to the same core.
            mpirun.args(["--hostfile", &hostfile, "--map-by", "node", "--bind-to", "none"]);
        }
        let status = mpirun
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
