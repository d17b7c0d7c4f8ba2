//! `elfin_trainer::dist` with real processes on CPU: each test re-runs this
//! binary, filtered to itself, under `mpirun -np 2` or `-np 3
//! --oversubscribe` (or alone, as an MPI singleton), with a marker in the
//! environment that makes the process a rank. The ranks check their results
//! themselves and print a line per rank that the parent test looks for.

use anyhow::{anyhow, ensure, Context, Result};
use elfin_trainer::dist::{
    broadcast_tensors, broadcast_var_store, check_consistency, trainable_named, BackendKind, DdpBackend, DistArgs,
    GradSync, ProcessGroup, World, ZeroSharding,
};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tch::nn::{self, Module, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

const CHILD: &str = "ELFIN_DIST_CHILD";

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn env_usize(name: &str) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} not set"))
}

/// The device (`ELFIN_DEVICE`: cpu, the default, or cuda) and collective
/// backend (`ELFIN_BACKEND`: auto, mpi or nccl) of a rank; checks that the
/// group got the backend these imply.
fn setup(world: &World) -> Result<(ProcessGroup, Device)> {
    let cuda = std::env::var("ELFIN_DEVICE").is_ok_and(|d| d == "cuda");
    let device = if cuda { Device::Cuda(world.local_gpu().context("no usable CUDA device")?) } else { Device::Cpu };
    let backend = match std::env::var("ELFIN_BACKEND").as_deref() {
        Ok("nccl") => DdpBackend::Nccl,
        Ok("mpi") => DdpBackend::Mpi,
        _ => DdpBackend::Auto,
    };
    let pg = ProcessGroup::new(world, &DistArgs { ddp_backend: backend, ..DistArgs::default() }, device)?;
    let expected = match (backend, world.size) {
        (DdpBackend::Nccl, _) => BackendKind::Nccl,
        (_, 1) => BackendKind::Single,
        _ => BackendKind::Mpi,
    };
    ensure!(pg.backend() == expected, "expected the {expected:?} backend, got {:?}", pg.backend());
    Ok((pg, device))
}

/// Body of a rank: initialise the world, run `f`, end through `World::finish`.
fn rank_main(f: impl FnOnce(&World) -> Result<()>) {
    let world = World::init().expect("MPI world");
    let result = f(&world);
    world.finish(result).expect("rank failed");
}

/// Runs test `name` of this binary as `np` ranks under mpirun (`np` = 0:
/// one process without any launcher), killed after `limit`.
fn launch(name: &str, np: usize, env: &[(&str, String)], limit: Duration) -> (Output, Duration) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", &limit.as_secs().to_string()]);
    if np > 0 {
        cmd.args(["mpirun", "-np", &np.to_string(), "--oversubscribe", "-x", CHILD, "-x", "OMP_NUM_THREADS"]);
        for (k, _) in env {
            cmd.args(["-x", k]);
        }
    }
    cmd.arg(&exe).args(["--exact", name, "--nocapture", "--test-threads=1"]);
    cmd.env(CHILD, "1")
        .env("OMP_NUM_THREADS", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = cmd.output().expect("running mpirun through timeout");
    (out, start.elapsed())
}

fn text(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ranks_ok(out: &Output, what: &str, np: usize) {
    let all = text(out);
    assert!(out.status.success(), "job failed ({:?}):\n{all}", out.status);
    for rank in 0..np {
        let line = format!("{what} ok on rank {rank} of {np}");
        assert!(all.contains(&line), "missing `{line}`:\n{all}");
    }
}

// ---------------------------------------------------------------- collectives

fn collectives(world: &World) -> Result<()> {
    let (pg, device) = setup(world)?;
    let (r, n) = (world.rank as f64, world.size as f64);
    let shapes: [&[i64]; 7] = [&[], &[1], &[7], &[3, 5], &[4, 3, 2], &[64, 33], &[(1 << 20) + 3]];
    for kind in [Kind::Float, Kind::Half, Kind::BFloat16, Kind::Double] {
        for shape in shapes {
            let numel: i64 = shape.iter().product();
            // Small integers: every partial sum is exact in f16 and bf16.
            let base = Tensor::arange(numel, (Kind::Double, Device::Cpu)).remainder(13).reshape(shape);
            let mut t = (&base + r).to_kind(kind).to_device(device);
            pg.all_reduce_sum(&mut t)?;
            let t = t.to_device(Device::Cpu);
            let expected = &base * n + n * (n - 1.0) / 2.0;
            ensure!(t.to_kind(Kind::Double).equal(&expected), "all_reduce {kind:?} {shape:?} wrong");
        }
        // A non-contiguous tensor is reduced through a copy and written back.
        let base = Tensor::arange(15, (Kind::Double, Device::Cpu)).reshape([3, 5]);
        let mut t = (&base + r).to_kind(kind).to_device(device).transpose(0, 1);
        ensure!(!t.is_contiguous(), "the transposed tensor should not be contiguous");
        pg.all_reduce_sum(&mut t)?;
        let t = t.to_device(Device::Cpu);
        let expected = (&base * n + n * (n - 1.0) / 2.0).transpose(0, 1);
        ensure!(t.to_kind(Kind::Double).equal(&expected), "all_reduce of a transposed {kind:?} tensor wrong");
        for root in 0..world.size {
            // A reduce sums onto its root and leaves the others' data alone
            // (one shape above the 1 MiB chunks that MPI calls are cut into).
            for shape in [&[3i64, 4][..], &[(1 << 19) + 5]] {
                let base = Tensor::arange(shape.iter().product::<i64>(), (Kind::Double, Device::Cpu)).remainder(7);
                let mut t = (&base + r).to_kind(kind).to_device(device);
                pg.reduce_sum(&mut t, root)?;
                let want = if world.rank == root { &base * n + n * (n - 1.0) / 2.0 } else { &base + r };
                ensure!(
                    t.to_device(Device::Cpu).to_kind(Kind::Double).equal(&want),
                    "reduce {kind:?} {shape:?} to {root}"
                );
            }
            let mut t = Tensor::full([3, 4], r + 0.5, (kind, device));
            pg.broadcast(&mut t, root)?;
            let t = t.to_device(Device::Cpu);
            ensure!(
                t.to_kind(Kind::Double).equal(&Tensor::full([3, 4], root as f64 + 0.5, (Kind::Double, Device::Cpu))),
                "broadcast {kind:?} from {root}"
            );
        }
    }
    // Blocks, one per rank, of a flat tensor: each rank's block summed onto
    // it, then every block to every rank; empty blocks and a large one too.
    for kind in [Kind::Float, Kind::Double, Kind::BFloat16] {
        let size = world.size;
        for counts in [vec![5; size], (0..size).map(|q| if q == 0 { 0 } else { 3 + q }).collect(), {
            let mut c = vec![0; size];
            c[size - 1] = (1 << 19) + 7;
            c[0] += 2;
            c
        }] {
            let total = counts.iter().sum::<usize>() as i64;
            let base = Tensor::arange(total, (Kind::Double, Device::Cpu)).remainder(11);
            let mut t = (&base + r).to_kind(kind).to_device(device);
            pg.reduce_scatter_sum(&mut t, &counts)?;
            let offset = counts[..world.rank].iter().sum::<usize>() as i64;
            let len = counts[world.rank] as i64;
            let summed = &base * n + n * (n - 1.0) / 2.0;
            let got = t.to_device(Device::Cpu).to_kind(Kind::Double).narrow(0, offset, len);
            ensure!(got.equal(&summed.narrow(0, offset, len)), "reduce_scatter {kind:?} {counts:?}: own block wrong");
            // Every rank fills its own block with its rank; the gather gives all.
            let mut t = Tensor::full([total], -1.0, (kind, device));
            let _ = t.narrow(0, offset, len).fill_(world.rank as f64);
            pg.all_gather_blocks(&mut t, &counts)?;
            let want: Vec<f64> = counts.iter().enumerate().flat_map(|(q, &c)| vec![q as f64; c]).collect();
            let got = t.to_device(Device::Cpu).to_kind(Kind::Double);
            ensure!(got.equal(&Tensor::from_slice(&want)), "all_gather_blocks {kind:?} {counts:?}");
        }
    }
    let wrong = vec![1; world.size + 1];
    let refused = pg.reduce_scatter_sum(&mut Tensor::zeros([world.size as i64 + 1], (Kind::Float, device)), &wrong);
    ensure!(refused.is_err(), "blocks for more ranks than the world has must be refused");

    // Packed broadcasts: mixed dtypes, interleaved (as BatchNorm buffers
    // sorted by name are), a non-contiguous tensor, a 0-d one; every
    // element distinct, so that a misplaced one shows.
    let specs: [(&[i64], Kind, bool); 6] = [
        (&[3], Kind::Float, false),
        (&[2], Kind::Int64, false),
        (&[4, 5], Kind::Float, true),
        (&[], Kind::Float, false),
        (&[1], Kind::Int64, false),
        (&[6], Kind::Double, false),
    ];
    let values = |rank: usize| -> Vec<Tensor> {
        specs
            .iter()
            .enumerate()
            .map(|(i, &(shape, kind, transposed))| {
                let numel = shape.iter().product::<i64>();
                let t = (Tensor::arange(numel, (Kind::Double, Device::Cpu)) + (10 * i + 100 * rank) as f64)
                    .reshape(shape)
                    .to_kind(kind)
                    .to_device(device);
                if transposed {
                    t.transpose(0, 1)
                } else {
                    t
                }
            })
            .collect()
    };
    for root in 0..world.size {
        let tensors = values(world.rank);
        broadcast_tensors(&pg, &tensors, root)?;
        for (i, (got, want)) in tensors.iter().zip(values(root)).enumerate() {
            ensure!(got.equal(&want), "packed broadcast from {root}: tensor {i} is {got:?}, expected {want:?}");
        }
    }
    let mut counts = Tensor::from_slice(&[world.rank as i64, 1]).to_device(device);
    pg.all_reduce_sum(&mut counts)?;
    let counts = counts.to_device(Device::Cpu);
    ensure!(Vec::<i64>::try_from(&counts)? == vec![(n * (n - 1.0) / 2.0) as i64, world.size as i64], "i64 all_reduce");
    let mut metrics = [r, 1.5, 1e15 + r, 0.1];
    pg.all_reduce_f64(&mut metrics)?;
    let expected = [n * (n - 1.0) / 2.0, 1.5 * n, 1e15 * n + n * (n - 1.0) / 2.0, 0.1 * n];
    ensure!(metrics.iter().zip(expected).all(|(a, b)| (a - b).abs() <= 1e-9 * b.abs().max(1.0)), "metrics {metrics:?}");
    let gathered = pg.all_gather_u64(&[world.rank as u64, 10 * world.rank as u64])?;
    let expected: Vec<u64> = (0..world.size as u64).flat_map(|q| [q, 10 * q]).collect();
    ensure!(gathered == expected, "all_gather {gathered:?}");
    let mine = format!("rank {} says {}", world.rank, "x".repeat(world.rank * 3));
    let texts = pg.all_gather_bytes(mine.as_bytes())?;
    let expected: Vec<Vec<u8>> =
        (0..world.size).map(|q| format!("rank {q} says {}", "x".repeat(q * 3)).into_bytes()).collect();
    ensure!(texts == expected, "all_gather_bytes {texts:?}");
    pg.barrier()?;
    println!("collectives ok on rank {} of {}", world.rank, world.size);
    Ok(())
}

#[test]
fn collectives_on_two_ranks() {
    if is_child() {
        return rank_main(collectives);
    }
    let (out, _) = launch("collectives_on_two_ranks", 2, &[], Duration::from_secs(120));
    assert_ranks_ok(&out, "collectives", 2);
}

#[test]
fn collectives_on_three_ranks() {
    if is_child() {
        return rank_main(collectives);
    }
    let (out, _) = launch("collectives_on_three_ranks", 3, &[], Duration::from_secs(120));
    assert_ranks_ok(&out, "collectives", 3);
}

/// The start-up self-check of the process group: right results pass on every rank; a wrong
/// all-reduce result on rank 1 alone fails the check on every rank, naming rank 1.
fn collectives_self_check(world: &World) -> Result<()> {
    let (pg, device) = setup(world)?;
    let summary = elfin_trainer::doctor::collectives::check(&pg, device, |_| {})?;
    ensure!(summary.contains(&format!("all {} ranks", world.size)), "summary: {summary}");
    let wrong_on_rank_1 = |summed: &mut Vec<f32>| {
        if world.rank == 1 {
            summed[4000] += 1.0;
        }
    };
    let err = match elfin_trainer::doctor::collectives::check(&pg, device, wrong_on_rank_1) {
        Ok(_) => anyhow::bail!("a wrong all-reduce on rank 1 passed the check"),
        Err(e) => e.to_string(),
    };
    ensure!(err.contains("rank 1: all-reduce of the rank ids: element 4000"), "error: {err}");
    ensure!(!err.contains("rank 0:"), "rank 0 was right: {err}");
    println!("collectives self-check ok on rank {} of {}", world.rank, world.size);
    Ok(())
}

#[test]
fn the_collectives_self_check_names_the_rank_with_a_wrong_result() {
    if is_child() {
        return rank_main(collectives_self_check);
    }
    let (out, _) =
        launch("the_collectives_self_check_names_the_rank_with_a_wrong_result", 2, &[], Duration::from_secs(60));
    assert_ranks_ok(&out, "collectives self-check", 2);
}

// ------------------------------------------------------- a small test model

/// Two linear layers, a bias `side` used only by flagged samples, a
/// parameter `never` used by no sample and a frozen offset.
struct Model {
    l1: nn::Linear,
    l2: nn::Linear,
    side: Tensor,
    frozen: Tensor,
}

const GLOBAL_BATCH: i64 = 12;
/// Samples below this index use `side`; all of them fall in rank 0's share
/// with 2 or 3 ranks.
const SIDE_SAMPLES: i64 = 3;

impl Model {
    fn new(vs: &VarStore) -> Model {
        let root = vs.root();
        let _never = root.var("never", &[2, 2], nn::Init::Const(0.5));
        Model {
            l1: nn::linear(&root / "l1", 6, 8, Default::default()),
            l2: nn::linear(&root / "l2", 8, 3, Default::default()),
            side: root.var("side", &[3], nn::Init::Randn { mean: 0.0, stdev: 1.0 }),
            frozen: root.var("frozen", &[3], nn::Init::Randn { mean: 0.0, stdev: 1.0 }).set_requires_grad(false),
        }
    }

    /// Summed squared error of samples `range` of the global batch of `update`.
    fn loss(&self, update: i64, range: std::ops::Range<i64>) -> Tensor {
        let (x, y) = global_batch(update);
        let n = range.end - range.start;
        let x = x.narrow(0, range.start, n);
        let y = y.narrow(0, range.start, n);
        let device = self.side.device();
        let (x, y) = (x.to_device(device), y.to_device(device));
        let flags =
            Tensor::arange_start(range.start, range.end, (Kind::Float, device)).lt(SIDE_SAMPLES as f64).unsqueeze(1);
        let out = self.l2.forward(&self.l1.forward(&x).relu()) + &self.frozen;
        let out = if range.start < SIDE_SAMPLES { out + flags.to_kind(Kind::Float) * &self.side } else { out };
        (out - y).square().sum(Kind::Float)
    }
}

/// The samples of an update: a function of the update number only.
fn global_batch(update: i64) -> (Tensor, Tensor) {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(1000 + update);
    let x = Tensor::randn([GLOBAL_BATCH, 6], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([GLOBAL_BATCH, 3], (Kind::Float, Device::Cpu));
    (x, y)
}

fn share(rank: usize, size: usize) -> std::ops::Range<i64> {
    let per = GLOBAL_BATCH / size as i64;
    rank as i64 * per..(rank as i64 + 1) * per
}

fn allclose(a: &Tensor, b: &Tensor, tol: f64) -> bool {
    let diff = (a - b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1.0);
    diff <= tol * scale
}

/// Each rank also trains a copy of the model on the whole batch, single
/// process, and compares: gradients after one synchronised backward,
/// parameters after several Adam updates (Adam's `zero_grad` sets gradients
/// to none, so every sync also re-attaches them to the buckets).
fn grad_sync(world: &World) -> Result<()> {
    let (pg, device) = setup(world)?;
    // Summation orders differ between the share and the whole batch; GPU
    // kernels round differently again.
    let tol = if device == Device::Cpu { 1e-6 } else { 1e-5 };
    tch::manual_seed(100 + world.rank as i64);
    let vs = VarStore::new(device);
    let model = Model::new(&vs);
    if world.size > 1 {
        let err = check_consistency(&pg, trainable_named(&vs).iter().map(|(n, t)| (n.as_str(), t)))
            .err()
            .ok_or_else(|| anyhow!("differently initialised ranks passed the consistency check"))?;
        ensure!(err.to_string().contains("parameters differ between ranks"), "unexpected message: {err}");
    }
    // A tiny bucket cap spreads the parameters over several buckets.
    let mut sync = GradSync::from_var_store(&vs, 64)?;
    ensure!(sync.num_buckets() > 2, "expected several buckets, got {}", sync.num_buckets());
    let names: Vec<&str> = sync.named_parameters().map(|(n, _)| n).collect();
    ensure!(!names.contains(&"frozen"), "a frozen parameter is in the gradient sync: {names:?}");
    sync.broadcast_parameters(&pg)?;
    broadcast_var_store(&pg, &vs)?;
    let named = trainable_named(&vs);
    check_consistency(&pg, named.iter().map(|(n, t)| (n.as_str(), t))).context("after the broadcast")?;

    let mut ref_vs = VarStore::new(device);
    let ref_model = Model::new(&ref_vs);
    ref_vs.copy(&vs)?;
    let ref_named = trainable_named(&ref_vs);
    let sample_size = (GLOBAL_BATCH * 3) as f64;

    ref_model.loss(0, 0..GLOBAL_BATCH).backward();
    let mut local = [0.0f64];
    let range = share(world.rank, world.size);
    local[0] = (range.end - range.start) as f64 * 3.0;
    model.loss(0, range).backward();
    pg.all_reduce_f64(&mut local)?;
    ensure!(local[0] == sample_size, "global sample size {}", local[0]);
    sync.sync(&pg, local[0])?;
    for ((name, p), (_, q)) in named.iter().zip(&ref_named) {
        let (g, rg) = (p.grad(), q.grad());
        if name == "never" {
            ensure!(!g.defined() && !rg.defined(), "`never` should have no gradient");
            continue;
        }
        ensure!(g.defined(), "`{name}` has no gradient after sync on rank {}", world.rank);
        ensure!(allclose(&g, &(rg / sample_size), tol), "gradient of `{name}` differs from the single-process one");
    }
    let normalise_reference = || {
        for (_, q) in &ref_named {
            let mut g = q.grad();
            if g.defined() {
                let _ = g.g_div_scalar_(sample_size);
            }
        }
    };
    normalise_reference();

    let mut opt = nn::Adam::default().build(&vs, 1e-2)?;
    let mut ref_opt = nn::Adam::default().build(&ref_vs, 1e-2)?;
    opt.step();
    ref_opt.step();
    for update in 1..6 {
        opt.zero_grad();
        ref_opt.zero_grad();
        model.loss(update, share(world.rank, world.size)).backward();
        sync.sync(&pg, sample_size)?;
        opt.step();
        ref_model.loss(update, 0..GLOBAL_BATCH).backward();
        normalise_reference();
        ref_opt.step();
        check_consistency(&pg, named.iter().map(|(n, t)| (n.as_str(), t)))
            .with_context(|| format!("after update {update}"))?;
    }
    for ((name, p), (_, q)) in named.iter().zip(&ref_named) {
        ensure!(allclose(p, q, 10.0 * tol), "`{name}` after 6 updates differs from single-process training");
    }

    // A rank that diverges is caught, and every rank gets the same verdict.
    if world.rank == world.size - 1 {
        let l1 = vs.variables()["l1.weight"].shallow_clone();
        tch::no_grad(|| {
            let _ = l1.get(0).get(0).g_add_scalar_(1e-3);
        });
    }
    match check_consistency(&pg, named.iter().map(|(n, t)| (n.as_str(), t))) {
        Ok(()) if world.size > 1 => return Err(anyhow!("a perturbed parameter passed the consistency check")),
        Ok(()) => {}
        Err(err) => ensure!(err.to_string().contains("`l1.weight`"), "the message should name l1.weight: {err}"),
    }
    println!("grad sync ok on rank {} of {}", world.rank, world.size);
    Ok(())
}

#[test]
fn grad_sync_matches_single_process_on_two_ranks() {
    if is_child() {
        return rank_main(grad_sync);
    }
    let (out, _) = launch("grad_sync_matches_single_process_on_two_ranks", 2, &[], Duration::from_secs(120));
    assert_ranks_ok(&out, "grad sync", 2);
}

#[test]
fn grad_sync_matches_single_process_on_three_ranks() {
    if is_child() {
        return rank_main(grad_sync);
    }
    let (out, _) = launch("grad_sync_matches_single_process_on_three_ranks", 3, &[], Duration::from_secs(120));
    assert_ranks_ok(&out, "grad sync", 3);
}

/// Rank 1 builds a differently shaped model: both broadcasts refuse, on
/// every rank, instead of failing inside MPI or hanging.
fn mismatched_models(world: &World) -> Result<()> {
    let (pg, _) = setup(world)?;
    let vs = VarStore::new(Device::Cpu);
    let width = if world.rank == 1 { 4 } else { 3 };
    let _ = vs.root().var("w", &[2, width], nn::Init::Const(1.0));
    let expected = "rank 1 has different";
    let err = broadcast_var_store(&pg, &vs).err().context("broadcast_var_store accepted different models")?;
    ensure!(err.to_string().contains(expected), "unexpected message: {err}");
    let sync = GradSync::from_var_store(&vs, 1 << 20)?;
    let err = sync.broadcast_parameters(&pg).err().context("broadcast_parameters accepted different models")?;
    ensure!(err.to_string().contains(expected), "unexpected message: {err}");
    println!("mismatch refused ok on rank {} of {}", world.rank, world.size);
    Ok(())
}

#[test]
fn ranks_with_different_models_are_refused() {
    if is_child() {
        return rank_main(mismatched_models);
    }
    let (out, _) = launch("ranks_with_different_models_are_refused", 2, &[], Duration::from_secs(120));
    assert_ranks_ok(&out, "mismatch refused", 2);
}

// ------------------------------------- ranks × update-freq invariance

/// Trains 4 Adam updates with this world's size and `ELFIN_UPDATE_FREQ`
/// micro-batches per rank; rank 0 saves the parameters to `ELFIN_OUT`.
fn train_and_save(world: &World) -> Result<()> {
    let update_freq = env_usize("ELFIN_UPDATE_FREQ") as i64;
    let out = std::env::var("ELFIN_OUT")?;
    let pg = ProcessGroup::new(world, &DistArgs::default(), Device::Cpu)?;
    tch::manual_seed(7 + world.rank as i64);
    let vs = VarStore::new(Device::Cpu);
    let model = Model::new(&vs);
    let mut sync = GradSync::from_var_store(&vs, 25_000_000)?;
    sync.broadcast_parameters(&pg)?;
    broadcast_var_store(&pg, &vs)?;
    let mut opt = nn::Adam::default().build(&vs, 1e-2)?;
    for update in 0..4 {
        for p in trainable_named(&vs) {
            p.1.shallow_clone().zero_grad();
        }
        let share = share(world.rank, world.size);
        let micro = (share.end - share.start) / update_freq;
        let mut sample_size = [0.0f64];
        for m in 0..update_freq {
            let start = share.start + m * micro;
            model.loss(update, start..start + micro).backward();
            sample_size[0] += (micro * 3) as f64;
        }
        pg.all_reduce_f64(&mut sample_size)?;
        sync.sync(&pg, sample_size[0])?;
        opt.step();
    }
    // Zeroed in place, the gradients stayed bucket views: only `never`
    // (never used) has none.
    let with_grad = trainable_named(&vs).iter().filter(|(_, t)| t.grad().defined()).count();
    ensure!(with_grad == sync.named_parameters().count() - 1, "{with_grad} parameters have gradients");
    ensure!(
        sync.grads_in_buckets() == with_grad,
        "only {} of {with_grad} gradients are bucket views",
        sync.grads_in_buckets()
    );
    if world.rank == 0 {
        let named = trainable_named(&vs);
        Tensor::save_multi(&named.iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>(), &out)?;
    }
    println!("training ok on rank {} of {}", world.rank, world.size);
    Ok(())
}

#[test]
fn one_rank_two_micro_batches_equals_two_ranks() {
    if is_child() {
        return rank_main(train_and_save);
    }
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single.ot");
    let double = dir.path().join("double.ot");
    let env = |freq: &str, out: &Path| {
        vec![("ELFIN_UPDATE_FREQ", freq.to_string()), ("ELFIN_OUT", out.display().to_string())]
    };
    // One process started without any launcher: world size 1.
    let (out, _) =
        launch("one_rank_two_micro_batches_equals_two_ranks", 0, &env("2", &single), Duration::from_secs(120));
    assert_ranks_ok(&out, "training", 1);
    let (out, _) =
        launch("one_rank_two_micro_batches_equals_two_ranks", 2, &env("1", &double), Duration::from_secs(120));
    assert_ranks_ok(&out, "training", 2);
    let a = Tensor::load_multi(&single).unwrap();
    let b = Tensor::load_multi(&double).unwrap();
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(allclose(ta, tb, 1e-5), "`{na}` differs between 1 rank × 2 micro-batches and 2 ranks × 1");
    }
}

// ---------------------------------------------------------------- faults

/// Rank 1 fails as `ELFIN_FAULT` says while rank 0 waits in a collective.
fn faulty(world: &World) -> Result<()> {
    let fault = std::env::var("ELFIN_FAULT")?;
    let timeout = if fault == "stall" { 3.0 } else { 1800.0 };
    let args = DistArgs { collective_timeout: timeout, ..DistArgs::default() };
    let pg = ProcessGroup::new(world, &args, Device::Cpu)?;
    pg.barrier()?;
    if world.rank == 1 {
        match fault.as_str() {
            "panic" => panic!("deliberate panic on rank 1"),
            "error" => return Err(anyhow!("deliberate error on rank 1")),
            "kill" => {
                // SAFETY: raising a signal on this process.
                unsafe { libc::raise(libc::SIGKILL) };
            }
            "stall" => std::thread::sleep(Duration::from_secs(25)),
            other => panic!("unknown fault {other}"),
        }
    }
    let mut t = Tensor::ones([1000], (Kind::Float, Device::Cpu));
    pg.all_reduce_sum(&mut t)?;
    pg.barrier()?;
    Ok(())
}

fn assert_job_fails_fast(test: &str, fault: &str, within: Duration, expected: &[&str]) {
    let (out, elapsed) = launch(test, 2, &[("ELFIN_FAULT", fault.to_string())], Duration::from_secs(90));
    let all = text(&out);
    assert!(!out.status.success(), "the job should fail:\n{all}");
    assert_ne!(out.status.code(), Some(124), "the job hung until killed by timeout:\n{all}");
    assert!(elapsed < within, "the job took {elapsed:?} to end (limit {within:?}):\n{all}");
    for e in expected {
        assert!(all.contains(e), "missing `{e}` in the output:\n{all}");
    }
}

#[test]
fn a_panicking_rank_ends_the_job() {
    if is_child() {
        return rank_main(faulty);
    }
    assert_job_fails_fast(
        "a_panicking_rank_ends_the_job",
        "panic",
        Duration::from_secs(30),
        &["rank 1/2", "deliberate panic on rank 1", "aborting the whole job"],
    );
}

#[test]
fn a_rank_returning_an_error_ends_the_job() {
    if is_child() {
        return rank_main(faulty);
    }
    assert_job_fails_fast(
        "a_rank_returning_an_error_ends_the_job",
        "error",
        Duration::from_secs(30),
        &["rank 1/2", "deliberate error on rank 1"],
    );
}

#[test]
fn a_killed_rank_ends_the_job() {
    if is_child() {
        return rank_main(faulty);
    }
    assert_job_fails_fast("a_killed_rank_ends_the_job", "kill", Duration::from_secs(30), &[]);
}

#[test]
fn a_stalled_collective_times_out_naming_it() {
    if is_child() {
        return rank_main(faulty);
    }
    // Rank 1 sleeps 25 s outside any collective; rank 0's all_reduce gives
    // up after the 3 s timeout.
    assert_job_fails_fast(
        "a_stalled_collective_times_out_naming_it",
        "stall",
        Duration::from_secs(20),
        &["rank 0/2", "collective `all_reduce` (1000 elements) did not complete within 3 s"],
    );
}

// ------------------------------------------------------------ CUDA (GPU check)

fn gpu_count() -> usize {
    if elfin_kernels::cuda_probe::cuda_usable() {
        tch::Cuda::device_count() as usize
    } else {
        0
    }
}

fn cuda_env(backend: &str) -> Vec<(&'static str, String)> {
    vec![("ELFIN_DEVICE", "cuda".to_string()), ("ELFIN_BACKEND", backend.to_string())]
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/gpu-check.sh"]
fn nccl_one_rank_collectives_and_grad_sync() {
    if is_child() {
        return rank_main(|world| {
            collectives(world)?;
            grad_sync(world)
        });
    }
    // One process without a launcher: a one-rank NCCL communicator.
    let (out, _) = launch("nccl_one_rank_collectives_and_grad_sync", 0, &cuda_env("nccl"), Duration::from_secs(180));
    assert_ranks_ok(&out, "collectives", 1);
    assert_ranks_ok(&out, "grad sync", 1);
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/gpu-check.sh"]
fn nccl_on_every_gpu() {
    if is_child() {
        return rank_main(|world| {
            collectives(world)?;
            grad_sync(world)
        });
    }
    let gpus = gpu_count().min(4);
    if gpus < 2 {
        eprintln!("nccl_on_every_gpu: {gpus} GPU(s); several ranks of NCCL need at least 2, nothing to test");
        return;
    }
    let (out, _) = launch("nccl_on_every_gpu", gpus, &cuda_env("nccl"), Duration::from_secs(180));
    assert_ranks_ok(&out, "collectives", gpus);
    assert_ranks_ok(&out, "grad sync", gpus);
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/gpu-check.sh"]
fn mpi_on_cuda_tensors_two_ranks() {
    if is_child() {
        return rank_main(|world| {
            collectives(world)?;
            grad_sync(world)
        });
    }
    // Two ranks may share one GPU with MPI (NCCL refuses that).
    let (out, _) = launch("mpi_on_cuda_tensors_two_ranks", 2, &cuda_env("mpi"), Duration::from_secs(180));
    assert_ranks_ok(&out, "collectives", 2);
    assert_ranks_ok(&out, "grad sync", 2);
}

// ------------------------------------------------- one process, no MPI

#[test]
fn single_process_sync_normalises_and_keeps_gradients_in_buckets() {
    if is_child() {
        return;
    }
    let pg = ProcessGroup::single();
    assert_eq!(pg.backend(), BackendKind::Single);
    tch::manual_seed(3);
    let vs = VarStore::new(Device::Cpu);
    let model = Model::new(&vs);
    // In bytes: l1.bias 32 | l1.weight 192 (over the cap: alone) | l2.bias 12
    // | l2.weight 96 | never 16 + side 12, with 100-byte buckets.
    let mut sync = GradSync::from_var_store(&vs, 100).unwrap();
    let names: Vec<&str> = sync.named_parameters().map(|(n, _)| n).collect();
    assert_eq!(names, ["l1.bias", "l1.weight", "l2.bias", "l2.weight", "never", "side"]);
    assert_eq!(sync.num_buckets(), 5);
    let named = trainable_named(&vs);
    let expected = |update: i64| -> Vec<Option<Tensor>> {
        let mut ref_vs = VarStore::new(Device::Cpu);
        let ref_model = Model::new(&ref_vs);
        ref_vs.copy(&vs).unwrap();
        ref_model.loss(update, 0..GLOBAL_BATCH).backward();
        trainable_named(&ref_vs).iter().map(|(_, t)| Some(t.grad()).filter(Tensor::defined).map(|g| g / 4.0)).collect()
    };
    for update in 0..3 {
        let want = expected(update);
        if update == 2 {
            // Gradients set to none (as libtorch's optimisers do) are
            // rebuilt as bucket views.
            let mut opt = nn::Sgd::default().build(&vs, 0.0).unwrap();
            opt.zero_grad();
        } else {
            named.iter().for_each(|(_, t)| t.shallow_clone().zero_grad());
        }
        model.loss(update, 0..GLOBAL_BATCH).backward();
        // Zeroed in place, the views survive and backward accumulates
        // straight into the buckets (no copy at the sync); before the first
        // sync and after a reset to none, no gradient is a view yet.
        assert_eq!(sync.grads_in_buckets(), if update == 1 { 5 } else { 0 }, "update {update}, after backward");
        sync.sync(&pg, 4.0).unwrap();
        for ((name, p), want) in named.iter().zip(&want) {
            match want {
                None => assert!(!p.grad().defined(), "`{name}` should have no gradient"),
                Some(w) => assert!(allclose(&p.grad(), w, 1e-6), "`{name}` at update {update}"),
            }
        }
        assert_eq!(sync.grads_in_buckets(), 5, "update {update}: every used parameter's gradient is a bucket view");
    }
    assert!(sync.sync(&pg, 0.0).is_err(), "a zero sample size must be refused");
}

#[test]
fn sharding_gives_every_tensor_one_owner_in_contiguous_balanced_parts() {
    if is_child() {
        return;
    }
    let sizes = [5i64, 300, 7, 64, 1000, 3, 250, 90, 16, 410];
    let params: Vec<(String, Tensor)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("p{i:02}"), Tensor::zeros([n], (Kind::Float, Device::Cpu)).set_requires_grad(true)))
        .collect();
    let (total, largest) = (sizes.iter().sum::<i64>(), *sizes.iter().max().unwrap());
    for size in [2usize, 3] {
        let mut owned_by = vec![Vec::new(); sizes.len()];
        let mut part = vec![0i64; size];
        for rank in 0..size {
            // 4000-byte buckets: the parts cross bucket boundaries.
            let mut sync =
                GradSync::new(params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), 4000).unwrap();
            sync.shard(rank, size).unwrap();
            sync.flatten_parameters().unwrap();
            assert!(sync.shard(rank, size).is_err(), "sharding lays the buckets out anew: not once flattened");
            assert!(sync.is_sharded());
            let owners = sync.owners();
            let owned = sync.owned();
            for (i, &mine) in owned.iter().enumerate() {
                assert_eq!(mine, owners[i] == rank);
                if mine {
                    owned_by[i].push(rank);
                    part[rank] += sizes[i];
                }
            }
            // The optimiser's runs hold this rank's tensors and nothing else.
            let mut in_runs: Vec<String> =
                sync.flat_runs().iter().flat_map(|r| r.members.iter().map(|(n, _)| n.clone())).collect();
            in_runs.sort();
            let mine: Vec<String> = (0..sizes.len()).filter(|&i| owned[i]).map(|i| format!("p{i:02}")).collect();
            assert_eq!(in_runs, mine, "rank {rank} of {size}");
            // One contiguous part per rank and bucket, in rank order, holding
            // exactly that rank's tensors.
            let mut in_parts = 0;
            for b in 0..sync.num_buckets() {
                let ranges = sync.shard_ranges(b);
                assert!(ranges.windows(2).all(|w| w[0].rank < w[1].rank && w[0].start + w[0].len <= w[1].start));
                in_parts += ranges.iter().filter(|r| r.rank == rank).count();
            }
            assert!(in_parts <= sync.num_buckets());
        }
        assert!(owned_by.iter().all(|o| o.len() == 1), "one owner per tensor: {owned_by:?}");
        for (rank, &n) in part.iter().enumerate() {
            assert!((n - total / size as i64).abs() <= largest, "rank {rank} of {size} owns {n} of {total} elements");
        }
    }
}

#[test]
fn dist_flags_parse_with_defaults() {
    if is_child() {
        return;
    }
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dist: DistArgs,
    }
    let cli = Cli::try_parse_from(["t"]).unwrap();
    assert_eq!(cli.dist.ddp_backend, DdpBackend::Auto);
    assert_eq!(cli.dist.bucket_cap_bytes(), 25_000_000);
    assert_eq!(cli.dist.collective_timeout, 1800.0);
    assert!(!cli.dist.consistency_due(100));
    assert_eq!(cli.dist.zero_sharding, ZeroSharding::None);
    let cli = Cli::try_parse_from([
        "t",
        "--ddp-backend",
        "nccl",
        "--bucket-cap-mb",
        "0.5",
        "--collective-timeout",
        "60",
        "--check-consistency",
        "10",
        "--find-unused-parameters",
        "--zero-sharding",
        "os",
    ])
    .unwrap();
    assert_eq!(cli.dist.ddp_backend, DdpBackend::Nccl);
    assert_eq!(cli.dist.zero_sharding, ZeroSharding::Os);
    assert_eq!(cli.dist.bucket_cap_bytes(), 500_000);
    assert!(cli.dist.consistency_due(20) && !cli.dist.consistency_due(25) && !cli.dist.consistency_due(0));
    assert!(Cli::try_parse_from(["t", "--bucket-cap-mb", "0"]).is_err());
    assert!(Cli::try_parse_from(["t", "--ddp-backend", "gloo"]).is_err());
    assert!(Cli::try_parse_from(["t", "--zero-sharding", "full"]).is_err());
}

#[test]
fn nccl_library_loads_where_present() {
    if is_child() {
        return;
    }
    if !elfin_kernels::cuda_probe::nccl_available() {
        eprintln!("no libnccl here; nothing to check");
        return;
    }
    // The wheel's NCCL has only the soname libnccl.so.2, which cudarc's own
    // loader does not try.
    let version = elfin_trainer::dist::nccl_version().expect("NCCL loads");
    eprintln!("NCCL {version}");
    assert!(version.starts_with("2."), "unexpected NCCL version {version}");
}
