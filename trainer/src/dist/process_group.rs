//! The one interface through which ranks talk: sum all-reduce, broadcast,
//! barrier and the small metric reductions, over a single process, MPI or
//! NCCL.

use super::faults::Watchdog;
use super::mpi_comm::{Elem, MpiComm};
use super::nccl_comm::NcclComm;
use super::{DdpBackend, DistArgs, World};
use anyhow::{bail, ensure, Result};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// Which library carries a process group's tensor collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// One rank: collectives do nothing.
    Single,
    /// MPI on host memory (CUDA tensors are staged through the host).
    Mpi,
    /// NCCL on device memory; host metrics and barriers still use MPI.
    Nccl,
}

/// The collectives of one job. Every rank must call the same operations in
/// the same order with tensors of the same shape and dtype.
pub struct ProcessGroup {
    rank: usize,
    size: usize,
    mpi: Option<MpiComm>,
    nccl: Option<NcclComm>,
    watchdog: Option<Watchdog>,
}

fn elem_of(kind: Kind) -> Result<Elem> {
    Ok(match kind {
        Kind::Float => Elem::F32,
        Kind::Double => Elem::F64,
        Kind::Half => Elem::F16,
        Kind::BFloat16 => Elem::BF16,
        Kind::Int64 => Elem::I64,
        Kind::Uint8 => Elem::U8,
        other => bail!("collectives support f32, f64, f16, bf16, i64 and u8 tensors, not {other:?}"),
    })
}

/// Runs `f` on the memory of `t`, through a contiguous copy written back
/// afterwards when `t` is not contiguous.
fn on_contiguous(t: &mut Tensor, f: impl FnOnce(&Tensor) -> Result<()>) -> Result<()> {
    if t.is_contiguous() {
        return f(t);
    }
    let tmp = t.contiguous();
    f(&tmp)?;
    tch::no_grad(|| t.copy_(&tmp));
    Ok(())
}

impl ProcessGroup {
    /// A group of one rank, without MPI.
    pub fn single() -> ProcessGroup {
        ProcessGroup { rank: 0, size: 1, mpi: None, nccl: None, watchdog: None }
    }

    /// The group of all ranks of `world` for tensors on `device`.
    /// `--ddp-backend auto` uses NCCL when `device` is a GPU, several ranks
    /// run and NCCL loads; an explicit `nccl` also builds a one-rank NCCL
    /// communicator (useful to test NCCL on one GPU).
    pub fn new(world: &World, args: &DistArgs, device: Device) -> Result<ProcessGroup> {
        let gpu = match device {
            Device::Cuda(i) => Some(i),
            _ => None,
        };
        let use_nccl = match (args.ddp_backend, gpu) {
            (DdpBackend::Mpi, _) | (DdpBackend::Auto, None) => false,
            (DdpBackend::Auto, Some(_)) => world.size > 1 && elfin_kernels::cuda_probe::nccl_available(),
            (DdpBackend::Nccl, Some(_)) => true,
            (DdpBackend::Nccl, None) => {
                bail!("--ddp-backend nccl needs a CUDA device, but this rank trains on {device:?}; use --ddp-backend mpi or auto")
            }
        };
        let mpi = (world.size > 1).then(MpiComm::world);
        let nccl = match (use_nccl, gpu) {
            (true, Some(gpu)) => Some(NcclComm::new(mpi.as_ref(), gpu)?),
            _ => None,
        };
        let watchdog = (world.size > 1).then(|| Watchdog::new(Duration::from_secs_f64(args.collective_timeout)));
        Ok(ProcessGroup { rank: world.rank, size: world.size, mpi, nccl, watchdog })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn backend(&self) -> BackendKind {
        match (&self.nccl, &self.mpi) {
            (Some(_), _) => BackendKind::Nccl,
            (None, Some(_)) => BackendKind::Mpi,
            (None, None) => BackendKind::Single,
        }
    }

    fn watch(&self, op: &'static str, elems: usize) -> Option<super::faults::WatchGuard<'_>> {
        self.watchdog.as_ref().map(|w| w.watch(op, elems))
    }

    /// The NCCL communicator for a tensor on `device`, if NCCL carries it.
    fn nccl_for(&self, device: Device) -> Result<Option<&NcclComm>> {
        match (device, &self.nccl) {
            (Device::Cuda(i), Some(nccl)) if i == nccl.gpu() => Ok(Some(nccl)),
            (Device::Cuda(i), Some(nccl)) => {
                bail!("tensor on CUDA device {i}, but this rank's NCCL communicator is on device {}", nccl.gpu())
            }
            _ => Ok(None),
        }
    }

    /// Sums `t` over all ranks, in place (f32, f64, f16, bf16, i64).
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        self.sum(t, None)
    }

    /// Sums `t` over all ranks into `t` on rank `root`; the other ranks'
    /// `t` is left as it was.
    pub fn reduce_sum(&self, t: &mut Tensor, root: usize) -> Result<()> {
        self.sum(t, Some(root))
    }

    /// The all-reduce (`root` none) or the reduce to `root`.
    fn sum(&self, t: &mut Tensor, root: Option<usize>) -> Result<()> {
        let elem = elem_of(t.kind())?;
        let count = t.numel();
        if count == 0 {
            return Ok(());
        }
        if let Some(nccl) = self.nccl_for(t.device())? {
            let _guard =
                self.watch(if root.is_none() { "all_reduce (NCCL enqueue)" } else { "reduce (NCCL enqueue)" }, count);
            // SAFETY: the tensor lives on the communicator's GPU with `count` elements; its
            // memory is reused only by work queued after this call on the same stream.
            return on_contiguous(t, |c| unsafe {
                match root {
                    None => nccl.all_reduce_sum(c.data_ptr(), count, elem),
                    Some(r) => nccl.reduce_sum(c.data_ptr(), count, elem, r),
                }
            });
        }
        let Some(mpi) = &self.mpi else { return Ok(()) };
        let _guard = self.watch(if root.is_none() { "all_reduce" } else { "reduce" }, count);
        // SAFETY (both closures): a contiguous CPU tensor (or host copy) of
        // `count` elements that nothing else touches now.
        let run = |c: &Tensor| unsafe {
            match root {
                None => mpi.all_reduce_sum(c.data_ptr(), count, elem),
                Some(r) => mpi.reduce_sum(c.data_ptr(), count, elem, r),
            }
        };
        if t.device() != Device::Cpu {
            return self.staged_through_host(t, run);
        }
        on_contiguous(t, run)
    }

    /// Sums the flat tensor `t` over all ranks block by block: rank r gets
    /// the sum of its block (`counts[r]` elements, the blocks consecutive in
    /// rank order) in place; the other blocks are left undefined. With MPI
    /// all ranks add at once (a ring); with NCCL, one reduce per block.
    pub fn reduce_scatter_sum(&self, t: &mut Tensor, counts: &[usize]) -> Result<()> {
        self.on_blocks(t, counts, true)
    }

    /// Gives every rank every rank's block of the flat tensor `t` (cut as
    /// in [`ProcessGroup::reduce_scatter_sum`]), in place; with NCCL, one
    /// broadcast per block.
    pub fn all_gather_blocks(&self, t: &mut Tensor, counts: &[usize]) -> Result<()> {
        self.on_blocks(t, counts, false)
    }

    /// The reduce-scatter (`sum`) or the all-gather of blocks.
    fn on_blocks(&self, t: &mut Tensor, counts: &[usize], sum: bool) -> Result<()> {
        self.check_blocks(t, counts)?;
        if self.nccl_for(t.device())?.is_some() {
            return self.per_block(
                t,
                counts,
                |block, r| if sum { self.reduce_sum(block, r) } else { self.broadcast(block, r) },
            );
        }
        let Some(mpi) = &self.mpi else { return Ok(()) };
        let elem = elem_of(t.kind())?;
        let _guard = self.watch(if sum { "reduce_scatter" } else { "all_gather" }, t.numel());
        // SAFETY: a contiguous CPU tensor (or host copy) of sum(counts)
        // elements that nothing else touches now.
        self.on_host(t, |host| unsafe {
            if sum {
                mpi.reduce_scatter_sum(host.data_ptr(), counts, elem)
            } else {
                mpi.all_gather_blocks(host.data_ptr(), counts, elem)
            }
        })
    }

    fn check_blocks(&self, t: &Tensor, counts: &[usize]) -> Result<()> {
        ensure!(
            t.dim() == 1 && counts.len() == self.size && counts.iter().sum::<usize>() == t.numel(),
            "blocks {counts:?} do not cut a flat tensor of {} elements over {} ranks",
            t.numel(),
            self.size
        );
        Ok(())
    }

    /// `f` on each rank's nonempty block with that rank.
    fn per_block(
        &self,
        t: &Tensor,
        counts: &[usize],
        mut f: impl FnMut(&mut Tensor, usize) -> Result<()>,
    ) -> Result<()> {
        let mut offset = 0;
        for (rank, &n) in counts.iter().enumerate() {
            if n > 0 {
                f(&mut t.narrow(0, offset as i64, n as i64), rank)?;
            }
            offset += n;
        }
        Ok(())
    }

    /// `f` on `t` if it is a contiguous CPU tensor, else on a contiguous
    /// host copy that is then copied back.
    fn on_host<R>(&self, t: &mut Tensor, f: impl FnOnce(&Tensor) -> Result<R>) -> Result<R> {
        if t.device() == Device::Cpu && t.is_contiguous() {
            return f(t);
        }
        let host = t.to_device(Device::Cpu).contiguous();
        let out = f(&host)?;
        tch::no_grad(|| t.copy_(&host));
        Ok(out)
    }

    /// Copies `t` from rank `root` to every rank, in place (any dtype).
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        let count = t.numel();
        if count == 0 {
            return Ok(());
        }
        let nbytes = count * t.kind().elt_size_in_bytes();
        if let Some(nccl) = self.nccl_for(t.device())? {
            let _guard = self.watch("broadcast (NCCL enqueue)", count);
            // SAFETY: as in `all_reduce_sum`, counted in bytes.
            return on_contiguous(t, |c| unsafe { nccl.broadcast(c.data_ptr(), nbytes, Elem::U8, root) });
        }
        let Some(mpi) = &self.mpi else { return Ok(()) };
        let _guard = self.watch("broadcast", count);
        if t.device() != Device::Cpu {
            // SAFETY: `host` is a contiguous CPU copy of `nbytes` bytes.
            return self.staged_through_host(t, |host| unsafe { mpi.broadcast_bytes(host.data_ptr(), nbytes, root) });
        }
        // SAFETY: a contiguous CPU tensor of `nbytes` bytes.
        on_contiguous(t, |c| unsafe { mpi.broadcast_bytes(c.data_ptr(), nbytes, root) })
    }

    /// MPI on a device tensor: copy to the host, run `f`, copy back.
    fn staged_through_host(&self, t: &mut Tensor, f: impl FnOnce(&Tensor) -> Result<()>) -> Result<()> {
        let host = t.to_device(Device::Cpu).contiguous();
        f(&host)?;
        tch::no_grad(|| t.copy_(&host));
        Ok(())
    }

    /// Waits until every rank has reached this call (and, with NCCL, until
    /// this rank's queued collectives have run).
    pub fn barrier(&self) -> Result<()> {
        self.wait()?;
        let Some(mpi) = &self.mpi else { return Ok(()) };
        let _guard = self.watch("barrier", 0);
        mpi.barrier()
    }

    /// Blocks until the collectives queued on the GPU have completed, under
    /// the watchdog (NCCL calls return before the data has moved). Does
    /// nothing for MPI, whose calls complete before returning.
    pub fn wait(&self) -> Result<()> {
        if let Some(nccl) = &self.nccl {
            let _guard = self.watch("wait for queued NCCL collectives", 0);
            tch::Cuda::synchronize(nccl.gpu() as i64);
        }
        Ok(())
    }

    /// Sums a few host numbers over all ranks (loss and token counts,
    /// validation scores), in float64 as the reference does.
    pub fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        let Some(mpi) = &self.mpi else { return Ok(()) };
        let _guard = self.watch("all_reduce of metrics", values.len());
        // SAFETY: a live, exclusively borrowed f64 slice.
        unsafe { mpi.all_reduce_sum(values.as_mut_ptr().cast(), values.len(), Elem::F64) }
    }

    /// Every rank's `local` (same length on every rank), concatenated in rank
    /// order.
    pub fn all_gather_u64(&self, local: &[u64]) -> Result<Vec<u64>> {
        let Some(mpi) = &self.mpi else { return Ok(local.to_vec()) };
        let _guard = self.watch("all_gather", local.len());
        mpi.all_gather_u64(local)
    }

    /// Every rank's bytes (of any length: serialised predictions, ids),
    /// in rank order.
    pub fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        let Some(mpi) = &self.mpi else { return Ok(vec![local.to_vec()]) };
        let _guard = self.watch("all_gather of bytes", local.len());
        mpi.all_gather_bytes(local)
    }
}
