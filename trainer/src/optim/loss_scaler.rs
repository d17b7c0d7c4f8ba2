//! fp16 dynamic loss scaling (spec §6.6). The loss is multiplied by `scale`
//! before backward. An update whose gradient norm is infinite or NaN is an
//! overflow: the scale is divided by 2 and the update is skipped (gradients
//! zeroed, no optimiser step, `num_updates` unchanged). After every
//! `scale_window` consecutive clean updates the scale doubles. Reaching the
//! minimum scale is an error: the loss is diverging, not merely overflowing.

use super::OptimArgs;
use serde::{Deserialize, Serialize};

const SCALE_FACTOR: f64 = 2.0;

#[derive(Debug, thiserror::Error)]
#[error(
    "the fp16 loss scale fell to the minimum ({min_scale}) after repeated gradient overflows \
     (it stays at {scale}); the loss is diverging: lower --lr, use --clip-norm, enlarge the batch, \
     use --bf16, or lower --min-loss-scale"
)]
pub struct MinimumLossScaleReached {
    pub scale: f64,
    pub min_scale: f64,
}

/// The scaler's whole state; it goes into checkpoints as JSON metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScalerState {
    pub scale: f64,
    pub scale_window: u64,
    pub tolerance: f64,
    pub threshold: Option<f64>,
    pub min_scale: f64,
    /// Updates seen, clean and overflowed.
    pub iter: i64,
    pub last_overflow_iter: i64,
    pub last_rescale_iter: i64,
    pub overflows_since_rescale: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DynamicLossScaler {
    state: LossScalerState,
}

/// The reference's default growth window when `--fp16-scale-window` is not given.
pub fn default_scale_window(world_size: u64, update_freq: u64) -> u64 {
    ((1u64 << 14) / (world_size * update_freq).max(1)).max(1)
}

impl DynamicLossScaler {
    pub fn new(args: &OptimArgs, world_size: u64, update_freq: u64) -> Self {
        let scale_window = args.fp16_scale_window.unwrap_or_else(|| default_scale_window(world_size, update_freq));
        Self::from_state(LossScalerState {
            scale: args.fp16_init_scale,
            scale_window: scale_window.max(1),
            tolerance: args.fp16_scale_tolerance,
            threshold: args.threshold_loss_scale,
            min_scale: args.min_loss_scale,
            iter: 0,
            last_overflow_iter: -1,
            last_rescale_iter: -1,
            overflows_since_rescale: 0,
        })
    }

    pub fn from_state(state: LossScalerState) -> Self {
        DynamicLossScaler { state }
    }

    pub fn state(&self) -> &LossScalerState {
        &self.state
    }

    /// The factor to multiply the loss by before backward.
    pub fn scale(&self) -> f64 {
        self.state.scale
    }

    /// Checks the true gradient norm of this update. `Ok(false)`: no overflow,
    /// step and then call [`Self::update`]. `Ok(true)`: overflow, the scale
    /// was lowered and the update must be skipped.
    pub fn check_overflow(&mut self, gnorm: f64) -> Result<bool, MinimumLossScaleReached> {
        if gnorm.is_finite() {
            return Ok(false);
        }
        let s = &mut self.state;
        let previous = s.scale;
        let since_rescale = (s.iter - s.last_rescale_iter) as f64;
        s.last_overflow_iter = s.iter;
        s.overflows_since_rescale += 1;
        if s.overflows_since_rescale as f64 / since_rescale >= s.tolerance {
            s.scale /= SCALE_FACTOR;
            if let Some(threshold) = s.threshold {
                s.scale = s.scale.max(threshold);
            }
            s.last_rescale_iter = s.iter;
            s.overflows_since_rescale = 0;
        }
        if s.scale <= s.min_scale {
            s.scale = previous;
            return Err(MinimumLossScaleReached { scale: previous, min_scale: s.min_scale });
        }
        s.iter += 1;
        Ok(true)
    }

    /// Call after every successful (non-overflowed) optimiser step.
    pub fn update(&mut self) {
        let s = &mut self.state;
        if (s.iter - s.last_overflow_iter) % s.scale_window as i64 == 0 {
            s.scale *= SCALE_FACTOR;
            s.last_rescale_iter = s.iter;
        }
        s.iter += 1;
    }
}
