//! The process group proves itself: an all-reduce of every rank's id and a
//! broadcast from rank 0, each checked on every rank, with the verdicts
//! exchanged so that every rank names the ranks that got a wrong result.
//! Written against `ProcessGroup`, so that the same code checks NCCL on GPUs
//! and is tested with MPI on CPUs; also the all-reduce bandwidth of `doctor`.

use crate::dist::ProcessGroup;
use anyhow::{bail, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Elements of the check's tensors: more than one chunk of the collectives, not a round number.
const COUNT: i64 = 4099;

/// Element i of rank r's tensor: r + (i mod 1024). Sums stay exact in f32 up to thousands of
/// ranks, and an element moved within a chunk shows.
fn pattern(i: usize) -> f64 {
    (i % 1024) as f64
}

fn contribution(rank: usize, device: Device) -> Tensor {
    (Tensor::arange(COUNT, (Kind::Float, device)).remainder(1024) + rank as f64).contiguous()
}

/// The collectives' results on this rank: (all-reduced, broadcast) to the host.
pub fn run(pg: &ProcessGroup, device: Device) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut summed = contribution(pg.rank(), device);
    pg.all_reduce_sum(&mut summed)?;
    let mut broadcast = contribution(pg.rank(), device);
    pg.broadcast(&mut broadcast, 0)?;
    pg.wait()?;
    let host = |t: &Tensor| Vec::<f32>::try_from(t.to_device(Device::Cpu));
    Ok((host(&summed)?, host(&broadcast)?))
}

/// None when this rank's results are right, else what is wrong.
pub fn verdict(size: usize, summed: &[f32], broadcast: &[f32]) -> Option<String> {
    let n = COUNT as usize;
    let ranks_sum = (size * (size - 1) / 2) as f64;
    let first_wrong = |got: &[f32], want: &dyn Fn(usize) -> f64| {
        (0..n).find(|&i| got.get(i).is_none_or(|&g| g as f64 != want(i))).map(|i| (i, got.get(i).copied(), want(i)))
    };
    if let Some((i, got, want)) = first_wrong(summed, &|i| ranks_sum + size as f64 * pattern(i)) {
        return Some(format!("all-reduce of the rank ids: element {i} is {got:?}, expected {want}"));
    }
    if let Some((i, got, want)) = first_wrong(broadcast, &pattern) {
        return Some(format!("broadcast from rank 0: element {i} is {got:?}, expected {want} (rank 0's)"));
    }
    None
}

/// Every rank's finding (None: fine), known to every rank, in rank order.
pub fn gather_findings(pg: &ProcessGroup, local: Option<&str>) -> Result<Vec<Option<String>>> {
    // A leading byte tells "fine" from an empty message.
    let bytes = match local {
        None => vec![0u8],
        Some(msg) => std::iter::once(1u8).chain(msg.bytes()).collect(),
    };
    Ok(pg
        .all_gather_bytes(&bytes)?
        .into_iter()
        .map(|b| (b.first() == Some(&1)).then(|| String::from_utf8_lossy(&b[1..]).into_owned()))
        .collect())
}

/// "rank 1: ...; rank 3: ..." for the ranks with a finding; None when there is none.
pub fn describe_findings(findings: &[Option<String>]) -> Option<String> {
    let parts: Vec<String> =
        findings.iter().enumerate().filter_map(|(r, f)| f.as_ref().map(|f| format!("rank {r}: {f}"))).collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The start-up check: Ok(summary) when every rank got the right results; an error naming
/// the ranks that did not, on every rank, otherwise. `tamper` changes this rank's results
/// before they are judged (tests only).
pub fn check(pg: &ProcessGroup, device: Device, tamper: impl FnOnce(&mut Vec<f32>)) -> Result<String> {
    let (mut summed, broadcast) = run(pg, device)?;
    tamper(&mut summed);
    let findings = gather_findings(pg, verdict(pg.size(), &summed, &broadcast).as_deref())?;
    if let Some(what) = describe_findings(&findings) {
        bail!(
            "the {:?} process group gives wrong results ({what}); training stops before it starts. \
             Run `elfin doctor` on the nodes of these ranks, and check their GPUs, NCCL version and network \
             (NCCL_DEBUG=INFO names the transport); --ddp-backend mpi avoids NCCL",
            pg.backend()
        );
    }
    Ok(format!("all-reduce and broadcast of {COUNT} floats right on all {} ranks ({:?})", pg.size(), pg.backend()))
}

/// The all-reduce bus bandwidth in GB/s of `bytes` of f32 on `device`, nccl-tests'
/// definition: algorithm bandwidth × 2(n − 1)/n, the best of `reps` timed calls after one warm-up.
pub fn all_reduce_bus_bandwidth(pg: &ProcessGroup, device: Device, bytes: usize, reps: usize) -> Result<f64> {
    let mut t = Tensor::ones([(bytes / 4) as i64], (Kind::Float, device));
    pg.all_reduce_sum(&mut t)?;
    pg.barrier()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        pg.all_reduce_sum(&mut t)?;
        pg.wait()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    let n = pg.size() as f64;
    Ok(bytes as f64 / best.max(1e-9) / 1e9 * 2.0 * (n - 1.0) / n)
}
