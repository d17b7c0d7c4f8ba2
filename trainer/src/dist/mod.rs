//! Distributed data parallelism: one trainer process per GPU (or CPU slot),
//! gradients averaged every update.
//!
//! - [`World`]: who am I (rank, size, local rank on this node), from MPI.
//! - [`ProcessGroup`]: the collectives (sum all-reduce, broadcast, barrier,
//!   metric reductions) with three backends: single process, MPI (CPU
//!   tensors) and NCCL (CUDA tensors, bootstrapped over MPI).
//! - [`GradSync`]: bucketed gradient all-reduce divided by the global sample
//!   size, the start-up parameter broadcast and the consistency check.
//! - [`faults`]: a failing rank ends the whole job (panic hook, collective
//!   watchdog, `MPI_Abort`).
//!
//! See `docs/distributed.md` for how to launch and how failures behave.

pub mod faults;
mod grad_sync;
mod mpi_comm;
mod nccl_comm;
mod process_group;
mod world;

pub use grad_sync::{
    broadcast_tensors, broadcast_var_store, check_consistency, check_same_on_all_ranks, trainable_named, FlatRun,
    GradSync, ShardRange,
};
pub use nccl_comm::nccl_version;
pub use process_group::{BackendKind, ProcessGroup};
pub use world::World;

use serde::{Deserialize, Serialize};

/// Which library carries the collectives.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DdpBackend {
    /// NCCL when training on a CUDA device and NCCL loads, MPI otherwise.
    Auto,
    /// MPI for everything (CUDA tensors are staged through host memory).
    Mpi,
    /// NCCL for CUDA tensors (metrics and control messages still go over MPI).
    Nccl,
}

/// What the ranks share out instead of each holding and computing it all.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZeroSharding {
    /// Every rank steps every parameter.
    #[default]
    None,
    /// Optimiser-state sharding (ZeRO stage 1): each rank steps its own
    /// part of the parameters, and the new weights are then broadcast.
    Os,
}

/// Flags of data-parallel training, shared by the commands that train.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct DistArgs {
    /// Collective backend for gradients: `auto` picks NCCL for CUDA tensors
    /// and MPI for CPU tensors.
    #[arg(long, value_enum, default_value_t = DdpBackend::Auto)]
    pub ddp_backend: DdpBackend,

    /// Size of one gradient bucket in MB (10^6 bytes): gradients are packed
    /// into flat buckets of about this size and each bucket is all-reduced
    /// with one call.
    #[arg(long, default_value_t = 25.0, value_parser = parse_positive)]
    pub bucket_cap_mb: f64,

    /// Seconds a collective may take before the job is aborted with the name
    /// of the operation (guards against a hung peer).
    #[arg(long, default_value_t = 1800.0, value_parser = parse_positive)]
    pub collective_timeout: f64,

    /// Every N updates, compare a checksum of the parameters across ranks
    /// and stop with an error naming the first parameter that differs
    /// (0 = never).
    #[arg(long, default_value_t = 0)]
    pub check_consistency: u64,

    /// Accepted for compatibility with the reference scripts. Parameters that
    /// get no gradient on some rank are always handled (their gradient is
    /// summed as zero), so this flag changes nothing.
    #[arg(long)]
    pub find_unused_parameters: bool,

    /// `os`: shard the optimiser over the ranks (fairseq's flag): each rank
    /// takes the gradient norm of and steps about 1/world-size of the
    /// parameters (whole tensors), the gradients of each part are summed onto
    /// its rank only, and the new weights are broadcast. Same arithmetic as
    /// `none`; faster where the optimiser's pass over memory is a sizeable
    /// part of an update. Checkpoints hold the whole optimiser state either way.
    #[arg(long, value_enum, default_value_t = ZeroSharding::None)]
    #[serde(default)]
    pub zero_sharding: ZeroSharding,
}

impl Default for DistArgs {
    fn default() -> Self {
        DistArgs {
            ddp_backend: DdpBackend::Auto,
            bucket_cap_mb: 25.0,
            collective_timeout: 1800.0,
            check_consistency: 0,
            find_unused_parameters: false,
            zero_sharding: ZeroSharding::None,
        }
    }
}

impl DistArgs {
    /// The bucket capacity in bytes.
    pub fn bucket_cap_bytes(&self) -> usize {
        (self.bucket_cap_mb * 1e6).round().max(1.0) as usize
    }

    /// Whether the parameter checksum should be compared after `num_updates`
    /// completed updates.
    pub fn consistency_due(&self, num_updates: u64) -> bool {
        self.check_consistency > 0 && num_updates > 0 && num_updates.is_multiple_of(self.check_consistency)
    }
}

fn parse_positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("expected a positive number, got `{s}`")),
    }
}
