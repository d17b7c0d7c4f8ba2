//! MPI collectives on raw host memory (the memory of CPU tensors, metric
//! vectors), in place where the MPI library allows it.
//!
//! rsmpi's safe collectives take Rust slices with separate send and receive
//! buffers; a gradient bucket is reduced in place (`MPI_IN_PLACE`), which
//! rsmpi does not expose, so these go through `mpi::ffi`.

use anyhow::{bail, Result};
use half::{bf16, f16};
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

/// Element types the collectives reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    F64,
    F16,
    BF16,
    I64,
    /// Raw bytes: broadcasts of any dtype.
    U8,
}

impl Elem {
    pub(crate) fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F64 | Elem::I64 => 8,
            Elem::F16 | Elem::BF16 => 2,
            Elem::U8 => 1,
        }
    }
}

/// MPI has no 16-bit float type before MPI 4.1, so f16/bf16 travel as
/// 16-bit integers with a user-defined sum that adds them as floats (in f32,
/// rounded once per pairwise addition, as NCCL does).
struct HalfOps {
    f16_sum: ffi::MPI_Op,
    bf16_sum: ffi::MPI_Op,
}
// SAFETY: MPI operation handles are process-wide immutable identifiers.
unsafe impl Send for HalfOps {}
unsafe impl Sync for HalfOps {}

unsafe extern "C" fn sum_f16(inv: *mut c_void, inout: *mut c_void, len: *mut c_int, _dt: *mut ffi::MPI_Datatype) {
    // SAFETY: MPI passes two arrays of `*len` elements of the registered type (u16).
    let (a, b) = unsafe {
        let n = *len as usize;
        (std::slice::from_raw_parts(inv as *const f16, n), std::slice::from_raw_parts_mut(inout as *mut f16, n))
    };
    for (acc, x) in b.iter_mut().zip(a) {
        *acc = f16::from_f32(acc.to_f32() + x.to_f32());
    }
}

unsafe extern "C" fn sum_bf16(inv: *mut c_void, inout: *mut c_void, len: *mut c_int, _dt: *mut ffi::MPI_Datatype) {
    // SAFETY: as in `sum_f16`.
    let (a, b) = unsafe {
        let n = *len as usize;
        (std::slice::from_raw_parts(inv as *const bf16, n), std::slice::from_raw_parts_mut(inout as *mut bf16, n))
    };
    for (acc, x) in b.iter_mut().zip(a) {
        *acc = bf16::from_f32(acc.to_f32() + x.to_f32());
    }
}

fn half_ops() -> &'static HalfOps {
    static OPS: OnceLock<HalfOps> = OnceLock::new();
    OPS.get_or_init(|| {
        let create = |f: unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_int, *mut ffi::MPI_Datatype)| {
            let mut op = std::mem::MaybeUninit::<ffi::MPI_Op>::uninit();
            // SAFETY: MPI is initialised (a communicator exists); the function is a valid, commutative sum.
            unsafe {
                ffi::MPI_Op_create(Some(f), 1, op.as_mut_ptr());
                op.assume_init()
            }
        };
        HalfOps { f16_sum: create(sum_f16), bf16_sum: create(sum_bf16) }
    })
}

/// `MPI_IN_PLACE` is a C macro whose value differs between implementations
/// (Open MPI `(void*)1`, MPICH and its derivatives `(void*)-1`); it is chosen
/// from the library's version string. Unknown libraries reduce through a
/// scratch buffer instead.
fn in_place_marker() -> Option<*const c_void> {
    static MARKER: OnceLock<Option<usize>> = OnceLock::new();
    let marker = MARKER.get_or_init(|| {
        let version = mpi::environment::library_version().unwrap_or_default();
        if version.contains("Open MPI") {
            Some(1)
        } else if ["MPICH", "MVAPICH", "Intel(R) MPI"].iter().any(|n| version.contains(n)) {
            Some(usize::MAX)
        } else {
            None
        }
    });
    marker.map(|m| m as *const c_void)
}

/// Largest byte count reduced by one MPI call. Open MPI allocates a
/// temporary buffer as large as the message for each all-reduce; above
/// glibc's mmap threshold (at most 32 MB) every call maps and faults in fresh
/// pages, and large messages leave the caches. On 2 ranks of one node, one
/// 83 MB all-reduce took 113 ms and the same data in 1 MiB pieces 18 ms
/// (docs/performance.md). Counts are C ints, too.
const CHUNK_BYTES: usize = 1 << 20;

/// The world communicator's collectives. Only built when the world has more
/// than one rank.
pub(crate) struct MpiComm {
    comm: SimpleCommunicator,
}

impl MpiComm {
    pub(crate) fn world() -> Self {
        MpiComm { comm: SimpleCommunicator::world() }
    }

    pub(crate) fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    pub(crate) fn size(&self) -> usize {
        self.comm.size() as usize
    }

    fn datatype_and_op(elem: Elem) -> (ffi::MPI_Datatype, ffi::MPI_Op) {
        // SAFETY: reading rsmpi's constant handles.
        unsafe {
            match elem {
                Elem::F32 => (ffi::RSMPI_FLOAT, ffi::RSMPI_SUM),
                Elem::F64 => (ffi::RSMPI_DOUBLE, ffi::RSMPI_SUM),
                Elem::I64 => (ffi::RSMPI_INT64_T, ffi::RSMPI_SUM),
                Elem::U8 => (ffi::RSMPI_UINT8_T, ffi::RSMPI_SUM),
                Elem::F16 => (ffi::RSMPI_UINT16_T, half_ops().f16_sum),
                Elem::BF16 => (ffi::RSMPI_UINT16_T, half_ops().bf16_sum),
            }
        }
    }

    /// Sums `count` elements at `ptr` over all ranks, in place.
    ///
    /// # Safety
    /// `ptr` points to `count` initialised, writable elements of type `elem`
    /// that nothing else touches during the call.
    pub(crate) unsafe fn all_reduce_sum(&self, ptr: *mut c_void, count: usize, elem: Elem) -> Result<()> {
        let (datatype, op) = Self::datatype_and_op(elem);
        let mut scratch = Vec::new();
        let chunk_count = CHUNK_BYTES / elem.size();
        let mut done = 0;
        while done < count {
            let n = (count - done).min(chunk_count);
            // SAFETY: within the caller's buffer.
            let chunk = unsafe { (ptr as *mut u8).add(done * elem.size()) as *mut c_void };
            let rc = match in_place_marker() {
                // SAFETY: the buffer is valid for n elements; the marker is this library's MPI_IN_PLACE.
                Some(marker) => unsafe {
                    ffi::MPI_Allreduce(marker, chunk, n as c_int, datatype, op, self.comm.as_raw())
                },
                None => {
                    scratch.resize(n * elem.size(), 0u8);
                    // SAFETY: separate send (the tensor) and receive (scratch) buffers of n elements.
                    let rc = unsafe {
                        ffi::MPI_Allreduce(
                            chunk,
                            scratch.as_mut_ptr() as *mut c_void,
                            n as c_int,
                            datatype,
                            op,
                            self.comm.as_raw(),
                        )
                    };
                    // SAFETY: both buffers hold n * size bytes.
                    unsafe { std::ptr::copy_nonoverlapping(scratch.as_ptr(), chunk as *mut u8, n * elem.size()) };
                    rc
                }
            };
            check(rc, "MPI_Allreduce")?;
            done += n;
        }
        Ok(())
    }

    /// Copies `nbytes` at `ptr` on rank `root` to the same place on every rank.
    ///
    /// # Safety
    /// `ptr` points to `nbytes` writable bytes (initialised on the root).
    pub(crate) unsafe fn broadcast_bytes(&self, ptr: *mut c_void, nbytes: usize, root: usize) -> Result<()> {
        if root >= self.size() {
            bail!("broadcast root {root} is not a rank of a world of {} ranks", self.size());
        }
        let mut done = 0;
        while done < nbytes {
            let n = (nbytes - done).min(i32::MAX as usize);
            // SAFETY: within the caller's buffer; MPI_UINT8_T has size 1.
            let rc = unsafe {
                ffi::MPI_Bcast(
                    (ptr as *mut u8).add(done) as *mut c_void,
                    n as c_int,
                    ffi::RSMPI_UINT8_T,
                    root as c_int,
                    self.comm.as_raw(),
                )
            };
            check(rc, "MPI_Bcast")?;
            done += n;
        }
        Ok(())
    }

    pub(crate) fn barrier(&self) -> Result<()> {
        // SAFETY: a plain barrier on a valid communicator.
        check(unsafe { ffi::MPI_Barrier(self.comm.as_raw()) }, "MPI_Barrier")
    }

    /// Every rank's `local`, concatenated in rank order.
    pub(crate) fn all_gather_u64(&self, local: &[u64]) -> Result<Vec<u64>> {
        let mut all = vec![0u64; local.len() * self.size()];
        // SAFETY: the receive buffer holds size × len elements.
        let rc = unsafe {
            ffi::MPI_Allgather(
                local.as_ptr() as *const c_void,
                local.len() as c_int,
                ffi::RSMPI_UINT64_T,
                all.as_mut_ptr() as *mut c_void,
                local.len() as c_int,
                ffi::RSMPI_UINT64_T,
                self.comm.as_raw(),
            )
        };
        check(rc, "MPI_Allgather")?;
        Ok(all)
    }

    /// Every rank's bytes (lengths may differ), in rank order.
    pub(crate) fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        let lengths = self.all_gather_u64(&[local.len() as u64])?;
        let total: u64 = lengths.iter().sum();
        if total > i32::MAX as u64 {
            bail!("all_gather_bytes: {total} bytes in all exceed what one MPI call can gather (2 GiB)");
        }
        if total == 0 {
            // Open MPI rejects the dangling pointer of an empty receive buffer.
            return Ok(vec![Vec::new(); lengths.len()]);
        }
        let counts: Vec<c_int> = lengths.iter().map(|&l| l as c_int).collect();
        let displs: Vec<c_int> = counts.iter().scan(0, |off, &c| Some(std::mem::replace(off, *off + c))).collect();
        let mut all = vec![0u8; total as usize];
        // SAFETY: the receive buffer holds the sum of all counts; displacements are their prefix sums.
        let rc = unsafe {
            ffi::MPI_Allgatherv(
                local.as_ptr() as *const c_void,
                local.len() as c_int,
                ffi::RSMPI_UINT8_T,
                all.as_mut_ptr() as *mut c_void,
                counts.as_ptr(),
                displs.as_ptr(),
                ffi::RSMPI_UINT8_T,
                self.comm.as_raw(),
            )
        };
        check(rc, "MPI_Allgatherv")?;
        Ok(counts.iter().zip(&displs).map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec()).collect())
    }
}

fn check(rc: c_int, what: &str) -> Result<()> {
    // MPI_SUCCESS is 0 in every implementation.
    if rc != 0 {
        bail!("{what} failed with MPI error code {rc}");
    }
    Ok(())
}
