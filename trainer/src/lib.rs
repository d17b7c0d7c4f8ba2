//! elfin-trainer: one training rank of elfin. See `docs/architecture.md`.

pub mod criterion;
pub mod data;
pub mod dist;
pub mod model;
pub mod version;
