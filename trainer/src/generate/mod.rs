//! Sequence generation for validation and prediction.

pub mod beam_search;

pub use beam_search::{banned_tokens, beam_search, BeamSearchConfig, Hypothesis, StepModel};
