//! Self-checks: each module checks one part (the fused loss kernel, the
//! process group's collectives), for the start-up checks of a training run
//! (train/self_check.rs) and for `elfin-train doctor`.

pub mod collectives;
pub mod command;
pub mod kernel_check;
pub mod report;
