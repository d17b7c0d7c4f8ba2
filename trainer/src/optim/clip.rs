//! Gradient norm and clipping on the true (unscaled, normalised) gradient
//! (spec §6.4, §6.6). The loop hands over the raw accumulated gradients and
//! the pending `multiplier` (1 / (loss scale × global sample size)); the norm
//! is computed as `multiplier × ‖raw‖` and the gradients are multiplied once,
//! by the multiplier and the clip coefficient together, inside the
//! optimiser's pass over them.

use tch::{Kind, Tensor};

/// Which clip-coefficient arithmetic the reference uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipRule {
    /// fp16 with a loss scaler: `max_norm / norm` exactly, only when `norm > max_norm`.
    Exact,
    /// fp32/bf16: `min(max_norm / (norm + 1e-6), 1)`.
    WithEpsilon,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipOutcome {
    /// The pre-clip norm of the true gradient: the `gnorm` log field.
    /// Infinite or NaN on overflow, in which case the gradients were left untouched.
    pub gnorm: f64,
    /// `gnorm > max_norm` with clipping on: the `clip` log field is 100 for such updates, else 0.
    pub clipped: bool,
    /// What the raw gradients are to be multiplied by: the multiplier times
    /// the clip coefficient (1 when the norm is not finite).
    pub factor: f64,
}

impl ClipOutcome {
    pub fn is_finite(&self) -> bool {
        self.gnorm.is_finite()
    }
}

/// L2 norm over all tensors together, accumulated in float32 per tensor as
/// the reference does; undefined (absent) gradients count as zero. The
/// per-tensor norms stay on the gradients' device until the total, so a
/// CUDA model waits for the device once, not once per tensor.
pub fn total_norm(grads: &[Tensor]) -> f64 {
    norm_of_norms(tensor_norms(grads, &vec![true; grads.len()]).as_ref())
}

/// The float32 norm of each defined gradient, stacked in order; zero for
/// those that `owned` marks as another rank's (under optimiser sharding
/// each owner supplies its own, and a sum over ranks then holds every norm
/// exactly: x + 0 = x). `None` when no gradient is defined.
pub fn tensor_norms(grads: &[Tensor], owned: &[bool]) -> Option<Tensor> {
    let norms: Vec<Tensor> = grads
        .iter()
        .zip(owned)
        .filter(|(g, _)| g.defined())
        .map(|(g, &mine)| {
            if mine {
                g.norm_scalaropt_dtype(2.0, Kind::Float)
            } else {
                Tensor::zeros(&[] as &[i64], (Kind::Float, g.device()))
            }
        })
        .collect();
    (!norms.is_empty()).then(|| Tensor::stack(&norms, 0))
}

/// The total norm from the stacked per-tensor norms of [`tensor_norms`].
pub fn norm_of_norms(norms: Option<&Tensor>) -> f64 {
    norms.map_or(0.0, |n| n.norm().double_value(&[]))
}

/// Computes the true gradient norm and the factor the gradients are to be
/// multiplied by: `multiplier` times the clip coefficient. It leaves the
/// gradients alone, so that the optimiser can apply the factor in its own
/// pass over them ([`crate::optim::GradUse`]); [`ClipOutcome::apply`] does it
/// separately. `max_norm <= 0` disables clipping (the factor is then the
/// multiplier).
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64, multiplier: f64, rule: ClipRule) -> ClipOutcome {
    ClipOutcome::for_norm(total_norm(grads), max_norm, multiplier, rule)
}

impl ClipOutcome {
    /// [`clip_grad_norm`] for gradients whose raw norm (before the
    /// multiplier) is `raw_norm`.
    pub fn for_norm(raw_norm: f64, max_norm: f64, multiplier: f64, rule: ClipRule) -> ClipOutcome {
        let gnorm = multiplier * raw_norm;
        if !gnorm.is_finite() {
            return ClipOutcome { gnorm, clipped: false, factor: 1.0 };
        }
        let clipping = max_norm > 0.0;
        let coefficient = match rule {
            ClipRule::Exact if clipping && gnorm > max_norm => max_norm / gnorm,
            ClipRule::WithEpsilon if clipping => (max_norm / (gnorm + 1e-6)).min(1.0),
            _ => 1.0,
        };
        ClipOutcome { gnorm, clipped: clipping && gnorm > max_norm, factor: multiplier * coefficient }
    }
}

impl ClipOutcome {
    /// Multiplies the gradients in place by [`ClipOutcome::factor`].
    pub fn apply(&self, grads: &[Tensor]) {
        if self.factor != 1.0 {
            tch::no_grad(|| {
                for g in grads.iter().filter(|g| g.defined()) {
                    let _ = g.shallow_clone().g_mul_scalar_(self.factor);
                }
            });
        }
    }
}
