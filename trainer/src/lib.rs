//! elfin-trainer: one training rank of elfin. See `docs/architecture.md`.

pub mod checkpoint;
pub mod criterion;
pub mod data;
pub mod dist;
pub mod doctor;
pub mod eval;
pub mod generate;
pub mod metrics_log;
pub mod model;
pub mod optim;
pub mod prepare;
pub mod safetensors_dtype;
pub mod signals;
pub mod train;
pub mod version;
