//! The encouraging-loss math (arXiv 2110.06537) as OFA's
//! `adjust_label_smoothed_encouraging_loss` computes it: a reference made of
//! tch ops, a fused CPU implementation and a fused CUDA kernel.

pub mod cuda_probe;
