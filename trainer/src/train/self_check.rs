//! The start-up self-checks of a training run, once per process, in its first
//! update: the process group's collectives and the fused loss against the
//! reference on a slice of the first batch (before the loss is used), then the
//! first update's all-reduced gradient norm across ranks. Every result goes to
//! this rank's log and to metrics.jsonl (`"kind": "self_check"`).

use super::Trainer;
use crate::criterion::CriterionImpl;
use crate::doctor::{collectives, kernel_check};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::Tensor;

/// True on the first call with `flag` in this process (a process trains one run).
fn first_time(flag: &AtomicBool) -> bool {
    !flag.swap(true, Ordering::Relaxed)
}

impl Trainer {
    /// Called on the first micro-batch of every update, by every rank (`batch`: its
    /// logits and targets; None on a rank without data in it); runs once.
    pub(super) fn start_up_checks(&mut self, batch: Option<(&Tensor, &Tensor)>) -> Result<()> {
        static DONE: AtomicBool = AtomicBool::new(false);
        if !first_time(&DONE) {
            return Ok(());
        }
        if self.world.size > 1 {
            let result = collectives::check(&self.pg, self.device, |_| {});
            self.record_result("collectives", result)?;
        }
        self.check_fused_loss(batch)
    }

    /// The fused loss against the reference on every rank's slice; when any rank finds a
    /// difference, every rank falls back to the reference (or stops, with `--criterion-impl fused`).
    fn check_fused_loss(&mut self, batch: Option<(&Tensor, &Tensor)>) -> Result<()> {
        let implementation = self.criterion.implementation();
        if implementation == CriterionImpl::Reference {
            return Ok(());
        }
        let opts = self.criterion.options().clone();
        let local = match batch {
            Some((logits, target)) => {
                let (logits, target) =
                    kernel_check::slice(logits, target, kernel_check::SLICE_SENTENCES, opts.use_rdrop);
                let corrupt = kernel_check::corrupt_requested(self.world.rank);
                kernel_check::check(&opts, &logits, &target, self.progress.num_updates as i64, corrupt)?
            }
            None => Ok("no batch on this rank".to_string()),
        };
        let findings = collectives::gather_findings(&self.pg, local.as_ref().err().map(String::as_str))?;
        let Some(what) = collectives::describe_findings(&findings) else {
            return self.record("fused_loss", "pass", &local.unwrap_or_default());
        };
        let message =
            format!("the fused loss differs from the tch-ops reference on a slice of the first batch ({what})");
        if implementation == CriterionImpl::Fused {
            self.record("fused_loss", "fail", &message)?;
            bail!(
                "{message}; --criterion-impl fused forbids falling back: train with --criterion-impl auto (the \
                 reference then computes the loss) and report this with the output of `elfin doctor`"
            );
        }
        eprintln!(
            "elfin-train rank {}: warning: {message}; every rank computes the loss with the reference ops for the \
             whole run (slower, same results)",
            self.world.rank
        );
        self.criterion.fall_back_to_reference();
        self.record("fused_loss", "fallback", &message)
    }

    /// After the first update's gradient all-reduce, before the step: every rank must
    /// hold the same gradient norm, to the bit (the `--check-consistency` comparison).
    pub(super) fn check_first_gradient_norm(&mut self, gnorm: f64) -> Result<()> {
        static DONE: AtomicBool = AtomicBool::new(false);
        if self.world.size == 1 || !first_time(&DONE) {
            return Ok(());
        }
        let norm = Tensor::from_slice(&[gnorm]);
        let result = crate::dist::check_same_on_all_ranks(
            &self.pg,
            [("gradient norm", &norm)],
            "the first update's all-reduced gradient norm differs between ranks",
            "the start-up self-check",
        )
        .map(|()| format!("{gnorm} on all {} ranks", self.world.size));
        self.record_result("gradient_norm", result)
    }

    /// Records a check that passes or ends the run.
    fn record_result(&mut self, check: &str, result: Result<String>) -> Result<()> {
        match result {
            Ok(detail) => self.record(check, "pass", &detail),
            Err(e) => {
                self.record(check, "fail", &format!("{e:#}"))?;
                Err(e)
            }
        }
    }

    fn record(&mut self, check: &str, status: &str, detail: &str) -> Result<()> {
        self.console.info(&format!("self-check {check}: {status}: {detail}"));
        match &mut self.metrics {
            Some(metrics) => metrics.write_self_check(self.progress.num_updates, check, status, detail),
            None => Ok(()),
        }
    }
}
