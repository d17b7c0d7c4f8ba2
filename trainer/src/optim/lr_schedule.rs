//! `polynomial_decay` with OFA's `--warmup-ratio` (spec §6.1 step 4, §6.3).
//!
//! The LR of the update that follows `n` completed updates is `lr(n)`:
//! linear warmup from 0 to the peak over `warmup` updates, then
//! `(peak − end)·(1 − (n − warmup)/(total − warmup))^power + end`, and `end`
//! from `total` on. `lr(0) = 0` when there is a warmup, so the very first
//! update runs at LR 0, as in the reference.

use super::OptimArgs;
use anyhow::{ensure, Result};

/// Batches one rank reads per epoch: `ceil(ceil(rows / world) / batch_size)`.
/// Ranks with fewer rows get an empty batch appended, so every rank has this many.
pub fn batches_per_rank(rows: u64, world_size: u64, batch_size: u64) -> u64 {
    rows.div_ceil(world_size).div_ceil(batch_size)
}

/// Total updates of a run as the reference computes it for the schedule:
/// each epoch is `ceil(batches_per_rank / update_freq)` updates (the last
/// group of an epoch may be short), times `max_epoch` epochs.
pub fn total_num_updates(batches_per_rank: u64, update_freq: u64, max_epoch: u64) -> u64 {
    batches_per_rank.div_ceil(update_freq) * max_epoch
}

#[derive(Clone, Debug, PartialEq)]
pub struct PolynomialDecay {
    pub peak_lr: f64,
    pub end_lr: f64,
    pub power: f64,
    pub warmup_updates: u64,
    pub total_updates: u64,
}

impl PolynomialDecay {
    /// With `--warmup-ratio` > 0 the schedule spans `computed_total` updates
    /// (from [`total_num_updates`]) and warms up for `int(total × ratio)`;
    /// otherwise `--total-num-update` and `--warmup-updates` apply.
    pub fn from_args(args: &OptimArgs, computed_total: u64) -> Result<Self> {
        ensure!(args.lr > 0.0, "--lr must be positive, got {}", args.lr);
        ensure!((0.0..1.0).contains(&args.warmup_ratio), "--warmup-ratio must be in [0, 1), got {}", args.warmup_ratio);
        let (warmup_updates, total_updates) = if args.warmup_ratio > 0.0 {
            ((computed_total as f64 * args.warmup_ratio).floor() as u64, computed_total)
        } else {
            (args.warmup_updates, args.total_num_update)
        };
        ensure!(total_updates > 0, "the LR schedule has 0 total updates: is the training set empty?");
        Ok(PolynomialDecay {
            peak_lr: args.lr,
            end_lr: args.end_learning_rate,
            power: args.power,
            warmup_updates,
            total_updates,
        })
    }

    /// LR for the update that follows `num_updates` completed updates.
    pub fn lr(&self, num_updates: u64) -> f64 {
        if self.warmup_updates > 0 && num_updates <= self.warmup_updates {
            self.peak_lr * num_updates as f64 / self.warmup_updates as f64
        } else if num_updates >= self.total_updates {
            self.end_lr
        } else {
            let done = (num_updates - self.warmup_updates) as f64;
            let span = (self.total_updates - self.warmup_updates) as f64;
            (self.peak_lr - self.end_lr) * (1.0 - done / span).powf(self.power) + self.end_lr
        }
    }

    /// The line the reference prints when the schedule is set up.
    pub fn describe(&self) -> String {
        let factor = if self.warmup_updates > 0 { 1.0 / self.warmup_updates as f64 } else { 1.0 };
        format!("Total steps {}, warmup steps {}, warmup_factor {}", self.total_updates, self.warmup_updates, factor)
    }
}
