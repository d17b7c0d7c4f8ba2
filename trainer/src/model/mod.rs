//! The OFA unified encoder-decoder (see `spec/ofa-model.md`).

mod net_input;

pub use net_input::NetInput;
