//! Who this process is in the job, asked of MPI itself, so that the same
//! binary runs under Open MPI's or MPICH's `mpirun`, under Slurm's `srun`, and
//! alone without any launcher (an MPI singleton: world size 1).

use super::faults;
use anyhow::Result;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;
use std::sync::{Mutex, OnceLock};

/// MPI stays initialised until [`World::finish`]; the universe is kept here
/// rather than in `World` so that dropping a `World` on an error path never
/// runs `MPI_Finalize`, which waits for the other ranks and would hang the
/// job while they sit in a collective.
static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);
static WORLD: OnceLock<World> = OnceLock::new();

/// This process's place in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    /// Rank in the whole job, 0-based.
    pub rank: usize,
    /// Number of ranks in the whole job.
    pub size: usize,
    /// Rank among the processes on this node (picks the GPU).
    pub local_rank: usize,
    /// Number of ranks on this node.
    pub local_size: usize,
    /// This node's name as MPI reports it.
    pub host: String,
}

impl World {
    /// Initialises MPI (once per process; later calls return the same world)
    /// and finds the rank, the world size and the local rank, the latter by
    /// splitting the world by shared memory. With more than one rank a panic
    /// anywhere aborts the whole job.
    pub fn init() -> Result<World> {
        if let Some(world) = WORLD.get() {
            return Ok(world.clone());
        }
        let mut universe = UNIVERSE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(world) = WORLD.get() {
            return Ok(world.clone());
        }
        if mpi::environment::is_finalized() {
            anyhow::bail!("MPI was already finalised in this process; World::init must come before World::finish");
        }
        if !mpi::environment::is_initialized() {
            // The collective watchdog and the panic hook may call MPI_Abort
            // from a thread other than the one doing collectives.
            let (initialised, _provided) = mpi::initialize_with_threading(Threading::Multiple)
                .ok_or_else(|| anyhow::anyhow!("MPI could not be initialised"))?;
            *universe = Some(initialised);
        }
        let comm = SimpleCommunicator::world();
        let local = comm.split_shared(comm.rank());
        let world = World {
            rank: comm.rank() as usize,
            size: comm.size() as usize,
            local_rank: local.rank() as usize,
            local_size: local.size() as usize,
            host: mpi::environment::processor_name().unwrap_or_else(|_| "unknown host".into()),
        };
        faults::set_rank_label(format!("rank {}/{} (host {})", world.rank, world.size, world.host));
        if world.size > 1 {
            faults::install_panic_hook();
        }
        Ok(WORLD.get_or_init(|| world).clone())
    }

    /// Whether this is rank 0, the one that logs and saves.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The GPU this rank should use: the local rank modulo the visible
    /// devices, or `None` when CUDA is not usable here.
    pub fn local_gpu(&self) -> Option<usize> {
        if !elfin_kernels::cuda_probe::cuda_usable() {
            return None;
        }
        let count = tch::Cuda::device_count().max(1) as usize;
        Some(self.local_rank % count)
    }

    /// Ends this rank's part of the job with `result`. On success MPI is
    /// finalised. On an error in a job of several ranks the error is printed
    /// and the whole job aborted (the others would otherwise wait in their
    /// next collective); with one rank the error is returned to the caller.
    /// Drop every [`super::ProcessGroup`] before calling this.
    pub fn finish<T>(&self, result: Result<T>) -> Result<T> {
        match result {
            Err(err) if self.size > 1 => faults::abort_job(&format!("error: {err:#}")),
            result => {
                drop(UNIVERSE.lock().unwrap_or_else(|p| p.into_inner()).take());
                result
            }
        }
    }
}
