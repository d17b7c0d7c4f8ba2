//! The OFA unified encoder-decoder (see `spec/ofa-model.md`).

mod net_input;
pub mod resnet;

pub use net_input::NetInput;
pub use resnet::ResNet;
