//! Validation metrics, as the reference computes them (spec §4): CIDEr-D for
//! captions (`cider`) and Acc@0.5 for RefCOCO grounding (`score`), the
//! predictions file, the validation flags, and the `score` command.
//! See docs/evaluation.md.

pub mod args;
pub mod cider;
pub mod coco;
pub mod document_frequency;
pub mod grounding;
pub mod ngrams;
pub mod prediction;
pub mod score_cli;
pub mod text_norm;

pub use args::{EvalArgs, GenerationArgs};
pub use cider::{round_like_python, CiderD, ScoreSum};
pub use document_frequency::DocumentFrequency;
pub use grounding::{overlap, BoxDecoder, Overlap};
pub use prediction::Prediction;
