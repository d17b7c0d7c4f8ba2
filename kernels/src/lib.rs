//! The encouraging-loss math (arXiv 2110.06537) as OFA's
//! `adjust_label_smoothed_encouraging_loss` computes it: a reference made of
//! tch ops, a fused CPU implementation and a fused CUDA kernel, behind
//! [`encouraging_loss`].

pub mod cuda_probe;
pub mod el_cuda;
pub mod el_emulated;
pub mod el_fused_cpu;
mod el_input;
pub mod el_launch;
pub mod el_math;
pub mod el_options;
mod el_plan;
pub mod el_reference;

pub use el_input::ElBatch;
pub use el_options::{parse_constraint_range, ElError, ElImpl, ElOptions, ElOutput};

/// The loss, its parts and d(loss)/d(logits) of the summed loss, by the chosen implementation.
/// `Fused` runs the CPU loop for CPU logits and the CUDA kernel for CUDA logits.
pub fn encouraging_loss(opts: &ElOptions, batch: &ElBatch, implementation: ElImpl) -> Result<ElOutput, ElError> {
    match (implementation, batch.logits.device()) {
        (ElImpl::Reference, _) => el_reference::forward_backward(opts, batch),
        (ElImpl::Fused, tch::Device::Cuda(_)) => el_cuda::forward_backward(opts, batch),
        (ElImpl::Fused, _) => el_fused_cpu::forward_backward(opts, batch),
    }
}
