//! One NCCL communicator per process on its local GPU, working in place on
//! memory that libtorch owns.
//!
//! cudarc's safe NCCL wrappers only take cudarc's own buffers, so the raw
//! calls (`cudarc::nccl::result`) get the tensors' device pointers. They are
//! issued on the legacy default (NULL) stream, which is the stream libtorch
//! runs its kernels on, so they are ordered with the backward pass before
//! them and the optimiser after them without any extra synchronisation.

use super::mpi_comm::{Elem, MpiComm};
use anyhow::{bail, Context, Result};
use cudarc::driver::CudaContext;
use cudarc::nccl::{result, sys};
use std::ffi::c_void;
use std::sync::Arc;

pub(crate) struct NcclComm {
    comm: sys::ncclComm_t,
    ctx: Arc<CudaContext>,
    gpu: usize,
}

fn nccl_type(elem: Elem) -> sys::ncclDataType_t {
    match elem {
        Elem::F32 => sys::ncclDataType_t::ncclFloat32,
        Elem::F64 => sys::ncclDataType_t::ncclFloat64,
        Elem::F16 => sys::ncclDataType_t::ncclFloat16,
        Elem::BF16 => sys::ncclDataType_t::ncclBfloat16,
        Elem::I64 => sys::ncclDataType_t::ncclInt64,
        Elem::U8 => sys::ncclDataType_t::ncclUint8,
    }
}

fn nccl_check(res: Result<result::NcclStatus, result::NcclError>, what: &str) -> Result<()> {
    res.map(|_| ()).map_err(|e| anyhow::anyhow!("{what} failed: {:?}", e.0))
}

/// The legacy default stream: libtorch's default stream on every device.
fn torch_stream() -> sys::cudaStream_t {
    std::ptr::null_mut()
}

impl NcclComm {
    /// Creates the communicator of all ranks of `mpi` (or a single-rank one
    /// when `mpi` is `None`) on `gpu`. Rank 0 makes the unique id and
    /// broadcasts it over MPI.
    pub(crate) fn new(mpi: Option<&MpiComm>, gpu: usize) -> Result<NcclComm> {
        if !elfin_kernels::cuda_probe::driver_available() {
            bail!("--ddp-backend nccl needs the CUDA driver (libcuda), which is not found on this machine; use --ddp-backend mpi");
        }
        if !elfin_kernels::cuda_probe::nccl_available() {
            bail!("--ddp-backend nccl needs libnccl.so.2, which cannot be loaded; install NCCL or use --ddp-backend mpi");
        }
        let ctx = CudaContext::new(gpu).with_context(|| format!("opening CUDA device {gpu} for NCCL"))?;
        // The NULL stream and NCCL's device both follow the thread's current
        // context; make it this rank's GPU.
        ctx.bind_to_thread().with_context(|| format!("making CUDA device {gpu} current"))?;
        let (rank, size) = mpi.map(|m| (m.rank(), m.size())).unwrap_or((0, 1));
        let mut id = if rank == 0 {
            result::get_uniqueid().map_err(|e| anyhow::anyhow!("ncclGetUniqueId failed: {:?}", e.0))?
        } else {
            sys::ncclUniqueId { internal: [0; 128] }
        };
        if let Some(mpi) = mpi {
            // SAFETY: the id is a plain 128-byte struct owned by this frame.
            unsafe { mpi.broadcast_bytes(&mut id as *mut sys::ncclUniqueId as *mut c_void, size_of::<sys::ncclUniqueId>(), 0)? };
        }
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; every rank passes the same id.
        nccl_check(unsafe { result::comm_init_rank(&mut comm, size as i32, id, rank as i32) }, "ncclCommInitRank")
            .with_context(|| format!("creating the NCCL communicator of rank {rank}/{size} on GPU {gpu}"))?;
        Ok(NcclComm { comm, ctx, gpu })
    }

    pub(crate) fn gpu(&self) -> usize {
        self.gpu
    }

    /// Enqueues an in-place sum of `count` elements at device address `ptr`
    /// on libtorch's stream.
    ///
    /// # Safety
    /// `ptr` is device memory on this communicator's GPU holding `count`
    /// elements of `elem`, kept alive until the stream has run the call
    /// (libtorch's caching allocator only reuses it for work queued after).
    pub(crate) unsafe fn all_reduce_sum(&self, ptr: *mut c_void, count: usize, elem: Elem) -> Result<()> {
        self.ctx.bind_to_thread()?;
        // SAFETY: per the caller's contract; send and receive alias for in place.
        let res = unsafe { result::all_reduce(ptr, ptr, count, nccl_type(elem), sys::ncclRedOp_t::ncclSum, self.comm, torch_stream()) };
        nccl_check(res, "ncclAllReduce")
    }

    /// Enqueues an in-place broadcast from `root`.
    ///
    /// # Safety
    /// As for [`NcclComm::all_reduce_sum`].
    pub(crate) unsafe fn broadcast(&self, ptr: *mut c_void, count: usize, elem: Elem, root: usize) -> Result<()> {
        self.ctx.bind_to_thread()?;
        // SAFETY: per the caller's contract.
        let res = unsafe { result::broadcast(ptr, ptr, count, nccl_type(elem), root as i32, self.comm, torch_stream()) };
        nccl_check(res, "ncclBroadcast")
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Queued collectives must finish before their communicator goes.
        tch::Cuda::synchronize(self.gpu as i64);
        // SAFETY: the communicator was created by ncclCommInitRank and is destroyed once.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}
