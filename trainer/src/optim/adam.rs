//! fairseq's Adam (spec §6.2): one parameter group, float32 moments, eps added
//! to sqrt(v) *before* the bias correction, and decoupled weight decay
//! `p ← p − lr·wd·p` on every trainable tensor. This is not torch's AdamW,
//! whose eps comes after the bias correction.

use super::OptimArgs;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// The first and second moments of one parameter, float32, on its device.
pub struct Moments {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

pub struct Adam {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
    moments: BTreeMap<String, Moments>,
}

/// What a checkpoint keeps of the optimiser: the step counter and the
/// moments by parameter name (stored as `optimizer.exp_avg.<name>` and
/// `optimizer.exp_avg_sq.<name>`).
pub struct AdamState {
    pub step: u64,
    pub moments: BTreeMap<String, Moments>,
}

impl Adam {
    pub fn new(args: &OptimArgs) -> Self {
        Self::with_hyperparameters(args.adam_betas.0, args.adam_betas.1, args.adam_eps, args.weight_decay)
    }

    pub fn with_hyperparameters(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Adam { beta1, beta2, eps, weight_decay, step: 0, moments: BTreeMap::new() }
    }

    /// Number of steps taken (the `t` of the bias correction).
    pub fn num_steps(&self) -> u64 {
        self.step
    }

    /// One update of every parameter in `params` with learning rate `lr`,
    /// reading the gradients from `p.grad()`, which must already be unscaled,
    /// normalised and clipped. A trainable parameter without a gradient is
    /// stepped with a zero gradient (its moments decay, weight decay applies),
    /// as in the reference's flat fp32 gradient buffer.
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - self.beta1.powi(t);
        let bias_correction2 = 1.0 - self.beta2.powi(t);
        let step_size = lr * bias_correction2.sqrt() / bias_correction1;
        tch::no_grad(|| {
            for (name, param) in params {
                let grad = param.grad();
                let grad = if grad.defined() {
                    grad.to_kind(Kind::Float)
                } else {
                    Tensor::zeros_like(param).to_kind(Kind::Float)
                };
                let moments = self.moments.entry(name.clone()).or_insert_with(|| Moments {
                    exp_avg: Tensor::zeros_like(&grad),
                    exp_avg_sq: Tensor::zeros_like(&grad),
                });
                if moments.exp_avg.size() != param.size() {
                    bail!(
                        "Adam state for {name} has shape {:?} but the parameter has {:?}; \
                         the checkpoint's optimiser state belongs to another model (use --reset-optimizer)",
                        moments.exp_avg.size(),
                        param.size()
                    );
                }
                let m = &mut moments.exp_avg;
                let _ = m.g_mul_scalar_(self.beta1);
                let _ = m.g_add_(&(&grad * (1.0 - self.beta1)));
                let v = &mut moments.exp_avg_sq;
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.addcmul_(&(&grad * (1.0 - self.beta2)), &grad);
                let denom = v.sqrt().g_add_scalar_(self.eps);

                let mut master =
                    if param.kind() == Kind::Float { param.shallow_clone() } else { param.to_kind(Kind::Float) };
                if self.weight_decay != 0.0 {
                    let decay = &master * (-self.weight_decay * lr);
                    let _ = master.g_add_(&decay);
                }
                let _ = master.g_add_(&(&*m / &denom * (-step_size)));
                if param.kind() != Kind::Float {
                    param.shallow_clone().copy_(&master);
                }
            }
            Ok(())
        })
    }

    pub fn state(&self) -> AdamState {
        let moments = self
            .moments
            .iter()
            .map(|(name, m)| {
                (name.clone(), Moments { exp_avg: m.exp_avg.shallow_clone(), exp_avg_sq: m.exp_avg_sq.shallow_clone() })
            })
            .collect();
        AdamState { step: self.step, moments }
    }

    /// Restores a saved state onto the device of each named parameter.
    /// Every name in the state must be one of `params` (a frozen or renamed
    /// parameter means the checkpoint was made with other flags).
    pub fn load_state(&mut self, state: AdamState, params: &[(String, Tensor)]) -> Result<()> {
        let devices: BTreeMap<&str, &Tensor> = params.iter().map(|(n, p)| (n.as_str(), p)).collect();
        let mut moments = BTreeMap::new();
        for (name, m) in state.moments {
            let param = devices.get(name.as_str()).with_context(|| {
                format!(
                    "the checkpoint has Adam state for {name}, which is not a trainable parameter of this model \
                     (different --freeze-* flags or architecture?); use --reset-optimizer to start the optimiser afresh"
                )
            })?;
            let to = |t: Tensor| t.to_device(param.device()).to_kind(Kind::Float);
            moments.insert(name, Moments { exp_avg: to(m.exp_avg), exp_avg_sq: to(m.exp_avg_sq) });
        }
        self.step = state.step;
        self.moments = moments;
        Ok(())
    }
}
