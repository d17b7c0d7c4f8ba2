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
        // SAFETY: the caller's contract.
        unsafe { self.sum(ptr, count, elem, None) }
    }

    /// Sums `count` elements at `ptr` over all ranks into the same place on
    /// rank `root`; the other ranks' buffers are left as they were.
    ///
    /// # Safety
    /// As for [`MpiComm::all_reduce_sum`].
    pub(crate) unsafe fn reduce_sum(&self, ptr: *mut c_void, count: usize, elem: Elem, root: usize) -> Result<()> {
        if root >= self.size() {
            bail!("reduce root {root} is not a rank of a world of {} ranks", self.size());
        }
        // SAFETY: the caller's contract.
        unsafe { self.sum(ptr, count, elem, Some(root)) }
    }

    /// The all-reduce (`root` none) or the reduce to `root`, in chunks of
    /// [`CHUNK_BYTES`].
    unsafe fn sum(&self, ptr: *mut c_void, count: usize, elem: Elem, root: Option<usize>) -> Result<()> {
        let (datatype, op) = Self::datatype_and_op(elem);
        let receives = root.is_none_or(|r| r == self.rank());
        let mut scratch = Vec::new();
        let chunk_count = CHUNK_BYTES / elem.size();
        let mut done = 0;
        while done < count {
            let n = (count - done).min(chunk_count);
            // SAFETY: within the caller's buffer.
            let chunk = unsafe { (ptr as *mut u8).add(done * elem.size()) as *mut c_void };
            // In place where the library's MPI_IN_PLACE is known, else through
            // a scratch receive buffer copied back. A reduce's non-roots only
            // send: their receive buffer is not significant.
            let (send, recv) = match (in_place_marker(), receives) {
                (_, false) => (chunk as *const c_void, std::ptr::null_mut()),
                (Some(marker), true) => (marker, chunk),
                (None, true) => {
                    scratch.resize(n * elem.size(), 0u8);
                    (chunk as *const c_void, scratch.as_mut_ptr() as *mut c_void)
                }
            };
            let raw = self.comm.as_raw();
            // SAFETY: send and receive buffers of n elements (or the marker, or
            // an insignificant receive buffer on a reduce's non-root).
            let rc = unsafe {
                match root {
                    None => ffi::MPI_Allreduce(send, recv, n as c_int, datatype, op, raw),
                    Some(r) => ffi::MPI_Reduce(send, recv, n as c_int, datatype, op, r as c_int, raw),
                }
            };
            check(rc, if root.is_none() { "MPI_Allreduce" } else { "MPI_Reduce" })?;
            if receives && recv != chunk {
                // SAFETY: both buffers hold n * size bytes.
                unsafe { std::ptr::copy_nonoverlapping(scratch.as_ptr(), chunk as *mut u8, n * elem.size()) };
            }
            done += n;
        }
        Ok(())
    }

    /// Sums, over all ranks, the buffer at `ptr` cut into consecutive blocks
    /// of `counts[r]` elements, rank r receiving the sum of block r in place
    /// (the other blocks are left as partial sums). A ring, as the first half
    /// of a ring all-reduce: in each of the size − 1 steps every rank passes
    /// one block's partial sum to the next rank and adds the one it gets
    /// from the previous rank, in [`CHUNK_BYTES`] pieces, so that all ranks
    /// add at once. (Open MPI's own `MPI_Reduce_scatter` took 4–4.5 ms for
    /// 11 MB on 2 ranks here, against 3.1 ms for the whole all-reduce.) On 2
    /// ranks each sum is own + other, as the all-reduce's: the same bits.
    ///
    /// # Safety
    /// `ptr` points to `counts.iter().sum()` initialised, writable elements
    /// of type `elem` that nothing else touches during the call.
    pub(crate) unsafe fn reduce_scatter_sum(&self, ptr: *mut c_void, counts: &[usize], elem: Elem) -> Result<()> {
        let (datatype, op) = Self::datatype_and_op(elem);
        let mut scratch = vec![0u8; CHUNK_BYTES];
        // SAFETY: the caller's buffer; the scratch holds one chunk.
        unsafe {
            self.ring(
                ptr,
                counts,
                elem,
                0,
                |recv, n, into| check(ffi::MPI_Reduce_local(recv, into, n as c_int, datatype, op), "MPI_Reduce_local"),
                Some(&mut scratch),
            )
        }
    }

    /// Gives every rank every rank's block of the buffer at `ptr` (cut as in
    /// [`MpiComm::reduce_scatter_sum`]), in place, by the same ring: each
    /// step passes on the block received in the step before.
    ///
    /// # Safety
    /// As for [`MpiComm::reduce_scatter_sum`]; this rank's block is initialised.
    pub(crate) unsafe fn all_gather_blocks(&self, ptr: *mut c_void, counts: &[usize], elem: Elem) -> Result<()> {
        // SAFETY: the caller's buffer.
        unsafe { self.ring(ptr, counts, elem, 1, |_, _, _| Ok(()), None) }
    }

    /// The ring both use. In step s (1..size), rank r sends block
    /// (r − s + shift) mod size to rank r + 1 and receives block
    /// (r − s − 1 + shift) mod size from rank r − 1: into `scratch`, then
    /// `combine(received, n, into_block)`, or straight into place without one.
    unsafe fn ring(
        &self,
        ptr: *mut c_void,
        counts: &[usize],
        elem: Elem,
        shift: usize,
        combine: impl Fn(*const c_void, usize, *mut c_void) -> Result<()>,
        mut scratch: Option<&mut Vec<u8>>,
    ) -> Result<()> {
        let size = self.size();
        if counts.len() != size {
            bail!("{} block counts for a world of {size} ranks", counts.len());
        }
        let (datatype, _) = Self::datatype_and_op(elem);
        let starts: Vec<usize> = counts.iter().scan(0, |off, &c| Some(std::mem::replace(off, *off + c))).collect();
        let at = |block: usize, done: usize| -> *mut c_void {
            // SAFETY (of the callers): within the caller's buffer.
            unsafe { (ptr as *mut u8).add((starts[block] + done) * elem.size()) as *mut c_void }
        };
        let (rank, next, prev) = (self.rank(), (self.rank() + 1) % size, (self.rank() + size - 1) % size);
        let chunk = CHUNK_BYTES / elem.size();
        let longest = counts.iter().copied().max().unwrap_or(0);
        for step in 1..size {
            let send = (rank + 2 * size + shift - step) % size;
            let recv = (rank + 2 * size + shift - step - 1) % size;
            // As many pieces on every rank (some empty), so that each
            // send meets its receive.
            let mut done = 0;
            while done < longest {
                let ns = counts[send].saturating_sub(done).min(chunk);
                let nr = counts[recv].saturating_sub(done).min(chunk);
                let into = match &mut scratch {
                    Some(s) => s.as_mut_ptr() as *mut c_void,
                    None => at(recv, done),
                };
                // SAFETY: ns elements to send from the buffer, nr to receive
                // into the scratch (one chunk) or into place.
                let rc = unsafe {
                    ffi::MPI_Sendrecv(
                        at(send, done),
                        ns as c_int,
                        datatype,
                        next as c_int,
                        0,
                        into,
                        nr as c_int,
                        datatype,
                        prev as c_int,
                        0,
                        self.comm.as_raw(),
                        ffi::RSMPI_STATUS_IGNORE,
                    )
                };
                check(rc, "MPI_Sendrecv")?;
                if scratch.is_some() && nr > 0 {
                    combine(into, nr, at(recv, done))?;
                }
                done += chunk;
            }
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
