//! The OFA unified encoder-decoder (see `spec/ofa-model.md`).

// tch's `x += y` works in place, which autograd may refuse on a tensor it saved.
#![allow(clippy::assign_op_pattern)]

pub mod attention;
pub mod checkpoint_load;
pub mod cli_forward;
pub mod cli_model;
pub mod config;
pub mod decoder;
pub mod embeddings;
pub mod encoder;
pub mod layers;
mod net_input;
pub mod ofa;
pub mod precision;
pub mod relative_position;
pub mod resnet;

pub use checkpoint_load::{load_checkpoint, save_checkpoint};
pub use config::{ModelArgs, OfaConfig};
pub use decoder::DecoderCache;
pub use encoder::EncoderOut;
pub use net_input::NetInput;
pub use ofa::OfaModel;
pub use precision::Precision;
pub use resnet::ResNet;
