//! The optimisation step of one update: fairseq's Adam, the `polynomial_decay`
//! LR schedule with `--warmup-ratio`, clipping by total gradient norm and fp16
//! dynamic loss scaling (spec `ofa-finetuning.md` §6.2–§6.6).
//!
//! Master weights under `--fp16` / `--bf16`: the reference keeps a float32
//! copy of an fp16 model. elfin keeps the model's parameters in float32 and
//! runs the forward under CUDA autocast, so the parameters *are* the master
//! weights and the Adam moments are float32 too; nothing is copied back.
//! `--fp16` still needs the dynamic loss scaler ([`DynamicLossScaler`]),
//! because autocast's fp16 activations and their gradients can underflow;
//! `--bf16` (same exponent range as float32) runs without one, as the
//! reference does. A parameter that is not float32 is updated through a
//! float32 copy, so the arithmetic is float32 either way.

pub mod adam;
pub mod clip;
pub mod loss_scaler;
pub mod lr_schedule;

pub use adam::{Adam, AdamKernel, AdamState, GradUse};
pub use clip::{clip_grad_norm, norm_of_norms, tensor_norms, total_norm, ClipOutcome, ClipRule};
pub use loss_scaler::{DynamicLossScaler, LossScalerState, MinimumLossScaleReached};
pub use lr_schedule::{batches_per_rank, total_num_updates, PolynomialDecay};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Optimiser and precision flags, named and defaulted as in fairseq/OFA.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct OptimArgs {
    /// Optimiser. Only fairseq's `adam` (eps added outside the bias correction, decoupled weight decay).
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    pub optimizer: OptimizerKind,
    /// Adam's (beta1, beta2), written as a Python tuple as in the OFA scripts.
    #[arg(long, default_value = "(0.9, 0.999)", value_parser = parse_betas)]
    pub adam_betas: AdamBetas,
    /// Adam's epsilon, added to sqrt(v) before bias correction.
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Decoupled weight decay: every trainable tensor p loses lr·wd·p per update.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Peak learning rate (reached at the end of warmup).
    #[arg(long, default_value_t = 0.25)]
    pub lr: f64,
    /// LR schedule. Only `polynomial_decay` (linear warmup, then polynomial decay to --end-learning-rate).
    #[arg(long, value_enum, default_value_t = LrSchedulerKind::PolynomialDecay)]
    pub lr_scheduler: LrSchedulerKind,
    /// If > 0: the total number of updates is computed from the data (epochs × updates per epoch)
    /// and the warmup is int(total × ratio) updates; --total-num-update and --warmup-updates are ignored.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Linear warmup length in updates (used when --warmup-ratio is 0).
    #[arg(long, default_value_t = 0)]
    pub warmup_updates: u64,
    /// Update at which the LR reaches --end-learning-rate (used when --warmup-ratio is 0).
    #[arg(long, default_value_t = 1_000_000)]
    pub total_num_update: u64,
    /// LR after the decay.
    #[arg(long, default_value_t = 0.0)]
    pub end_learning_rate: f64,
    /// Exponent of the decay (1 = linear).
    #[arg(long, default_value_t = 1.0)]
    pub power: f64,
    /// Clip the gradient when its total L2 norm exceeds this (0 = never).
    #[arg(long, default_value_t = 0.0)]
    pub clip_norm: f64,
    /// Mixed precision with float16 autocast and dynamic loss scaling.
    #[arg(long, conflicts_with = "bf16")]
    pub fp16: bool,
    /// Mixed precision with bfloat16 autocast (no loss scaling).
    #[arg(long)]
    pub bf16: bool,
    /// Double the loss scale after this many consecutive updates without overflow
    /// (default: 2^14 / (world size × update freq)).
    #[arg(long)]
    pub fp16_scale_window: Option<u64>,
    /// Loss scale at the start of training.
    #[arg(long, default_value_t = 128.0)]
    pub fp16_init_scale: f64,
    /// Fraction of overflowing updates since the last rescale tolerated before halving the scale.
    #[arg(long, default_value_t = 0.0)]
    pub fp16_scale_tolerance: f64,
    /// Never lower the loss scale below this.
    #[arg(long)]
    pub threshold_loss_scale: Option<f64>,
    /// Stop training with an error when the loss scale falls to this value.
    #[arg(long, default_value_t = 1e-4)]
    pub min_loss_scale: f64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adam,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedulerKind {
    #[value(name = "polynomial_decay")]
    PolynomialDecay,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamBetas(pub f64, pub f64);

/// Parses `(0.9, 0.999)`, `(0.9,0.999)` or `0.9,0.999`: the Python-tuple
/// string the reference evaluates.
pub fn parse_betas(text: &str) -> Result<AdamBetas, String> {
    let inner = text.trim();
    let inner = inner.strip_prefix('(').and_then(|s| s.strip_suffix(')')).unwrap_or(inner);
    let parts: Vec<&str> = inner.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let [b1, b2] = parts.as_slice() else {
        return Err(format!("expected two betas like \"(0.9, 0.999)\", got {text:?}"));
    };
    let parse = |s: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|b| (0.0..1.0).contains(b))
            .ok_or_else(|| format!("beta {s:?} in {text:?} is not a number in [0, 1)"))
    };
    Ok(AdamBetas(parse(b1)?, parse(b2)?))
}

impl OptimArgs {
    /// Whether updates go through the dynamic loss scaler (fp16 only).
    pub fn uses_loss_scaler(&self) -> bool {
        self.fp16
    }

    /// The clipping arithmetic the reference uses with these flags.
    pub fn clip_rule(&self) -> ClipRule {
        if self.uses_loss_scaler() {
            ClipRule::Exact
        } else {
            ClipRule::WithEpsilon
        }
    }
}
