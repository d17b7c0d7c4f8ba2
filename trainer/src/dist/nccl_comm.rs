//! One NCCL communicator per process on its local GPU, working in place on
//! memory that libtorch owns.
//!
//! cudarc's safe NCCL wrappers only take cudarc's own buffers, so the raw C
//! functions get the tensors' device pointers. They are issued on the legacy
//! default (NULL) stream, which is the stream libtorch runs its kernels on,
//! so they are ordered with the backward pass before them and the optimiser
//! after them without any extra synchronisation.
//!
//! The functions are looked up here rather than through `cudarc::nccl`:
//! cudarc's loader tries `libnccl.so` and `libnccl.so.<CUDA major>` but not
//! NCCL's real soname `libnccl.so.2`, the only name the NCCL of a PyTorch
//! wheel (and of the `libnccl2` package) has, and panics when it finds none.
//! Opening `libnccl.so.2` also gives the very library libtorch loaded. The
//! types and constants are cudarc's bindings of `nccl.h`.

use super::mpi_comm::{Elem, MpiComm};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::CudaContext;
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Arc, OnceLock};

/// The NCCL entry points elfin uses (NCCL 2.x ABI; results as plain ints).
struct NcclLib {
    get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> c_int,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        ncclRedOp_t,
        ncclComm_t,
        cudaStream_t,
    ) -> c_int,
    reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        ncclRedOp_t,
        c_int,
        ncclComm_t,
        cudaStream_t,
    ) -> c_int,
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        c_int,
        ncclComm_t,
        cudaStream_t,
    ) -> c_int,
    comm_destroy: unsafe extern "C" fn(ncclComm_t) -> c_int,
    get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
}

fn load_nccl() -> Result<NcclLib, String> {
    let handle = ["libnccl.so.2", "libnccl.so"]
        .iter()
        .find_map(|name| {
            let name = CString::new(*name).ok()?;
            // SAFETY: dlopen with a valid C string; the handle is kept for the life of the process.
            let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            (!h.is_null()).then_some(h)
        })
        .ok_or("neither libnccl.so.2 nor libnccl.so can be loaded")?;
    let symbol = |name: &str| -> Result<*mut c_void, String> {
        let c_name = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: a valid handle and C string.
        let f = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
        if f.is_null() {
            Err(format!("the NCCL library has no {name}"))
        } else {
            Ok(f)
        }
    };
    // SAFETY: each symbol is the NCCL 2.x function of that name, whose C
    // signature the field's type spells out (the target type of each
    // transmute is that field's type).
    #[allow(clippy::missing_transmute_annotations)]
    unsafe {
        Ok(NcclLib {
            get_unique_id: std::mem::transmute::<*mut c_void, _>(symbol("ncclGetUniqueId")?),
            comm_init_rank: std::mem::transmute::<*mut c_void, _>(symbol("ncclCommInitRank")?),
            all_reduce: std::mem::transmute::<*mut c_void, _>(symbol("ncclAllReduce")?),
            reduce: std::mem::transmute::<*mut c_void, _>(symbol("ncclReduce")?),
            broadcast: std::mem::transmute::<*mut c_void, _>(symbol("ncclBroadcast")?),
            comm_destroy: std::mem::transmute::<*mut c_void, _>(symbol("ncclCommDestroy")?),
            get_version: std::mem::transmute::<*mut c_void, _>(symbol("ncclGetVersion")?),
            get_error_string: std::mem::transmute::<*mut c_void, _>(symbol("ncclGetErrorString")?),
        })
    }
}

fn nccl() -> Result<&'static NcclLib> {
    static LIB: OnceLock<Result<NcclLib, String>> = OnceLock::new();
    LIB.get_or_init(load_nccl).as_ref().map_err(|e| anyhow!("{e}; install NCCL 2 or use --ddp-backend mpi"))
}

impl NcclLib {
    /// `ncclSuccess` (0) and `ncclInProgress` (7, non-blocking
    /// communicators only) are not errors.
    fn check(&self, rc: c_int, what: &str) -> Result<()> {
        if rc == 0 || rc == 7 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static C string for any code.
        let text = unsafe { CStr::from_ptr((self.get_error_string)(rc)) }.to_string_lossy();
        bail!("{what} failed: {text} (NCCL error {rc}); NCCL_DEBUG=WARN in the environment tells more")
    }
}

/// The version of the NCCL library this process loads, as
/// `major.minor.patch` (needs no GPU).
pub fn nccl_version() -> Result<String> {
    let lib = nccl()?;
    let mut code: c_int = 0;
    // SAFETY: a valid out-pointer.
    lib.check(unsafe { (lib.get_version)(&mut code) }, "ncclGetVersion")?;
    // Since NCCL 2.9 the code is major*10000 + minor*100 + patch.
    Ok(format!("{}.{}.{}", code / 10000, code % 10000 / 100, code % 100))
}

pub(crate) struct NcclComm {
    comm: ncclComm_t,
    ctx: Arc<CudaContext>,
    gpu: usize,
}

fn nccl_type(elem: Elem) -> ncclDataType_t {
    match elem {
        Elem::F32 => ncclDataType_t::ncclFloat32,
        Elem::F64 => ncclDataType_t::ncclFloat64,
        Elem::F16 => ncclDataType_t::ncclFloat16,
        Elem::BF16 => ncclDataType_t::ncclBfloat16,
        Elem::I64 => ncclDataType_t::ncclInt64,
        Elem::U8 => ncclDataType_t::ncclUint8,
    }
}

/// The legacy default stream: libtorch's default stream on every device.
fn torch_stream() -> cudaStream_t {
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
        let lib = nccl()?;
        let ctx = CudaContext::new(gpu).with_context(|| format!("opening CUDA device {gpu} for NCCL"))?;
        // The NULL stream and NCCL's device both follow the thread's current
        // context; make it this rank's GPU.
        ctx.bind_to_thread().with_context(|| format!("making CUDA device {gpu} current"))?;
        let (rank, size) = mpi.map(|m| (m.rank(), m.size())).unwrap_or((0, 1));
        let mut id = ncclUniqueId { internal: [0; 128] };
        if rank == 0 {
            // SAFETY: `id` is a valid out-pointer.
            lib.check(unsafe { (lib.get_unique_id)(&mut id) }, "ncclGetUniqueId")?;
        }
        if let Some(mpi) = mpi {
            // SAFETY: the id is a plain 128-byte struct owned by this frame.
            unsafe { mpi.broadcast_bytes(&mut id as *mut ncclUniqueId as *mut c_void, size_of::<ncclUniqueId>(), 0)? };
        }
        let mut comm: ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; every rank passes the same id.
        lib.check(unsafe { (lib.comm_init_rank)(&mut comm, size as c_int, id, rank as c_int) }, "ncclCommInitRank")
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
        let lib = nccl()?;
        // SAFETY: per the caller's contract; send and receive alias for in place.
        let rc = unsafe {
            (lib.all_reduce)(ptr, ptr, count, nccl_type(elem), ncclRedOp_t::ncclSum, self.comm, torch_stream())
        };
        lib.check(rc, "ncclAllReduce")
    }

    /// Enqueues an in-place sum into rank `root` (the other ranks' buffers
    /// are left as they were).
    ///
    /// # Safety
    /// As for [`NcclComm::all_reduce_sum`].
    pub(crate) unsafe fn reduce_sum(&self, ptr: *mut c_void, count: usize, elem: Elem, root: usize) -> Result<()> {
        self.ctx.bind_to_thread()?;
        let lib = nccl()?;
        // SAFETY: per the caller's contract; send and receive alias for in place.
        let rc = unsafe {
            (lib.reduce)(
                ptr,
                ptr,
                count,
                nccl_type(elem),
                ncclRedOp_t::ncclSum,
                root as c_int,
                self.comm,
                torch_stream(),
            )
        };
        lib.check(rc, "ncclReduce")
    }

    /// Enqueues an in-place broadcast from `root`.
    ///
    /// # Safety
    /// As for [`NcclComm::all_reduce_sum`].
    pub(crate) unsafe fn broadcast(&self, ptr: *mut c_void, count: usize, elem: Elem, root: usize) -> Result<()> {
        self.ctx.bind_to_thread()?;
        let lib = nccl()?;
        // SAFETY: per the caller's contract.
        let rc = unsafe { (lib.broadcast)(ptr, ptr, count, nccl_type(elem), root as c_int, self.comm, torch_stream()) };
        lib.check(rc, "ncclBroadcast")
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Queued collectives must finish before their communicator goes.
        tch::Cuda::synchronize(self.gpu as i64);
        if let Ok(lib) = nccl() {
            // SAFETY: the communicator was created by ncclCommInitRank and is destroyed once.
            let _ = unsafe { (lib.comm_destroy)(self.comm) };
        }
    }
}
