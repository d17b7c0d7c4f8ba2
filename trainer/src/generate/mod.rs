//! Sequence generation for validation and prediction.

pub mod beam_search;
pub mod cli;
mod ofa_step;

pub use beam_search::{banned_tokens, beam_search, BeamSearchConfig, Hypothesis, StepModel};
pub use ofa_step::OfaStepModel;
