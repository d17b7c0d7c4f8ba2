//! One update (spec §6.4, §6.6): forward and backward of each micro-batch,
//! statistics summed over ranks, gradients summed over ranks and divided by
//! the global number of kept tokens (and the loss scale), clipping, the
//! overflow check, and the Adam step.

use super::Trainer;
use crate::criterion::backward_with_grad;
use crate::data::MicroBatch;
use crate::metrics_log::UpdateStats;
use crate::optim::{ClipOutcome, GradUse};
use anyhow::{bail, Result};
use std::time::Instant;

/// Local sums of one update, all-reduced as one f64 vector.
#[derive(Default)]
struct Sums {
    loss: f64,
    nll_loss: f64,
    ntokens: f64,
    nsentences: f64,
    sample_size: f64,
}

impl Sums {
    fn to_array(&self) -> [f64; 5] {
        [self.loss, self.nll_loss, self.ntokens, self.nsentences, self.sample_size]
    }
    fn from_array(a: [f64; 5]) -> Sums {
        Sums { loss: a[0], nll_loss: a[1], ntokens: a[2], nsentences: a[3], sample_size: a[4] }
    }
}

impl Trainer {
    /// Runs one update on this rank's micro-batches. `None` when fp16
    /// overflowed and the update was skipped.
    pub(super) fn update(&mut self, micro: &[MicroBatch]) -> Result<Option<UpdateStats>> {
        let start = Instant::now();
        self.sync_batch_norm()?;
        // Dropout and drop path draw from a generator seeded per update, as the reference does.
        tch::manual_seed((self.args.run.seed + self.progress.num_updates) as i64);
        let scale = self.scaler.as_ref().map_or(1.0, |s| s.scale());
        let mut sums = Sums::default();
        let mut fwd_bwd = 0.0;
        for mb in micro {
            let Some(batch) = &mb.batch else {
                self.start_up_checks(None)?;
                continue;
            };
            let input = batch.net_input.to_device(self.device);
            let target = batch.target.to_device(self.device);
            let forward = Instant::now();
            let logits = self.precision.run(self.device, || self.model.forward_t(&input, true));
            fwd_bwd += forward.elapsed().as_secs_f64();
            self.start_up_checks(Some((&logits, &target)))?;
            let out = self.criterion.compute(&logits, &target, None, None, self.progress.num_updates as i64)?;
            let grad = if scale == 1.0 { out.grad_logits } else { out.grad_logits * scale };
            let backward = Instant::now();
            backward_with_grad(&logits, &grad)?;
            fwd_bwd += backward.elapsed().as_secs_f64();
            sums.loss += out.loss;
            sums.nll_loss += out.nll_loss;
            sums.ntokens += batch.ntokens as f64;
            sums.nsentences += batch.nsentences as f64;
            sums.sample_size += out.sample_size as f64;
        }
        let communicating = Instant::now();
        let mut totals = sums.to_array();
        self.pg.all_reduce_f64(&mut totals)?;
        let sums = Sums::from_array(totals);

        // Summed over ranks in place in the buckets; the division by the loss
        // scale times the global kept-token count rides on the clip factor.
        // The gradients are views into the buckets; the norm is taken per
        // tensor in float32, as the reference does (one float32 reduction
        // over a whole bucket of millions of values loses about 1e-4).
        self.grad_sync.sync_sum(&self.pg)?;
        let comm_wall = communicating.elapsed().as_secs_f64();
        let optimising = Instant::now();
        let multiplier = 1.0 / (scale * sums.sample_size.max(1.0));
        let grads: Vec<_> = self.params.iter().map(|(_, p)| p.grad()).collect();
        let mut norms = crate::optim::tensor_norms(&grads, &self.grad_sync.owned());
        if let (Some(norms), true) = (&mut norms, self.grad_sync.is_sharded()) {
            // Each norm comes from its owner, the others add zeros: exact.
            self.pg.all_reduce_sum(norms)?;
        }
        let raw_norm = crate::optim::norm_of_norms(norms.as_ref());
        let clip = ClipOutcome::for_norm(raw_norm, self.args.optim.clip_norm, multiplier, self.clip_rule());
        self.check_first_gradient_norm(clip.gnorm)?;
        let overflow = match &mut self.scaler {
            Some(scaler) => scaler.check_overflow(clip.gnorm)?,
            None => false,
        };
        if overflow {
            self.zero_grads();
            if let (true, Some(scaler)) = (self.world.is_main(), &self.scaler) {
                self.console
                    .info(&format!("gradient overflow: skipping the update, loss scale lowered to {}", scaler.scale()));
            }
            return Ok(None);
        }
        if self.scaler.is_none() && (!clip.is_finite() || !sums.loss.is_finite()) {
            bail!(
                "the loss or the gradient is not finite at update {} (loss {}, gradient norm {}); \
                 checkpoint_last holds the last good state — lower --lr, or check the data",
                self.progress.num_updates + 1,
                sums.loss,
                clip.gnorm
            );
        }
        let lr = self.lr.lr(self.progress.num_updates);
        // The clip factor and the zeroing for the next update ride on Adam's pass.
        self.adam.step(&self.params, lr, GradUse { factor: clip.factor, zero_after: true })?;
        let optim_wall = optimising.elapsed().as_secs_f64();
        let gathering = Instant::now();
        self.grad_sync.gather_parameters(&self.pg)?;
        let comm_wall = comm_wall + gathering.elapsed().as_secs_f64();
        if let Some(scaler) = &mut self.scaler {
            scaler.update();
        }
        self.progress.num_updates += 1;
        if self.args.dist.consistency_due(self.progress.num_updates) {
            crate::dist::check_consistency(&self.pg, self.params.iter().map(|(n, t)| (n.as_str(), t)))?;
        }
        Ok(Some(UpdateStats {
            loss: sums.loss,
            nll_loss: sums.nll_loss,
            ntokens: sums.ntokens,
            nsentences: sums.nsentences,
            sample_size: sums.sample_size,
            gnorm: clip.gnorm,
            clipped: (self.args.optim.clip_norm > 0.0).then_some(clip.clipped),
            train_wall: start.elapsed().as_secs_f64(),
            fwd_bwd_wall: fwd_bwd,
            comm_wall,
            optim_wall,
        }))
    }

    fn clip_rule(&self) -> crate::optim::ClipRule {
        if self.scaler.is_some() {
            crate::optim::ClipRule::Exact
        } else {
            crate::optim::ClipRule::WithEpsilon
        }
    }

    fn zero_grads(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }
}
