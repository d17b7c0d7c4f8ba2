//! Presets: the per-task recipes `elfin launch` runs.

pub mod builtin;
pub mod command;
pub mod parse;
pub mod resolve;
