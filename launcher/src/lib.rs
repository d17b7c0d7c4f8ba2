//! elfin's launcher: presets, the launch plan, and running the ranks through mpirun.

pub mod cli;
pub mod doctor;
pub mod flags;
pub mod launch;
pub mod mpi_env;
pub mod mpirun;
pub mod plan;
pub mod preset;
pub mod presets_command;
pub mod quote;
pub mod rank_report;
pub mod report;
pub mod run;
pub mod slurm;
pub mod stop;
pub mod supervise;
