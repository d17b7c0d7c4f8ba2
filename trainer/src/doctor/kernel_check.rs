//! The fused loss (CUDA kernel or CPU loop, by the logits' device) against
//! the tch-ops reference on one batch: the start-up self-check of a training
//! run (on a slice of its first batch) and a line of `elfin-train doctor`.

use anyhow::{Context, Result};
use elfin_kernels::{encouraging_loss, ElBatch, ElImpl, ElOptions, ElOutput};
use tch::{Kind, Tensor};

/// Sentences of a batch the start-up check compares (both copies with R-Drop):
/// enough to cover every code path of a row, a fraction of a second for the reference.
pub const SLICE_SENTENCES: i64 = 2;

/// Test-only hook: `ELFIN_TEST_CORRUPT_FUSED_LOSS=RANK[,RANK...]` (or `all`)
/// makes the fused result of the self-check wrong on those ranks, so that the
/// fallback is tested without a broken kernel.
pub const CORRUPT_ENV: &str = "ELFIN_TEST_CORRUPT_FUSED_LOSS";

/// Whether the test hook asks to corrupt this rank's fused result.
pub fn corrupt_requested(rank: usize) -> bool {
    std::env::var(CORRUPT_ENV).is_ok_and(|v| v.split(',').any(|r| r.trim() == "all" || r.trim() == rank.to_string()))
}

/// The first `n` sentences of `logits` [B, T, V] and `target` [B, T]; with R-Drop
/// (the batch is [x; x]) the first `n` of each half, so that the copies stay paired.
pub fn slice(logits: &Tensor, target: &Tensor, n: i64, rdrop: bool) -> (Tensor, Tensor) {
    let b = logits.size()[0];
    let take = |t: &Tensor| {
        let t = t.detach();
        if rdrop && b >= 2 {
            let half = b / 2;
            let k = n.min(half);
            Tensor::cat(&[t.narrow(0, 0, k), t.narrow(0, half, k)], 0)
        } else {
            t.narrow(0, 0, n.min(b))
        }
    };
    (take(logits), take(target))
}

/// The largest gradient error allowed relative to the gradient's largest entry
/// (floored at 0.1): the tolerances of the GPU test (kernels/tests/el_cuda.rs),
/// where f16 and bf16 gradients are rounded to their dtype.
fn grad_tolerance(kind: Kind) -> f64 {
    match kind {
        Kind::Half => 2e-3,
        Kind::BFloat16 => 1e-2,
        _ => 1e-4,
    }
}

/// Ok(summary of the agreement) or Err(what differs).
pub fn compare(fused: &ElOutput, reference: &ElOutput) -> Result<String, String> {
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
    let (loss_err, nll_err) = (rel(fused.loss, reference.loss), rel(fused.nll_loss, reference.nll_loss));
    if !(loss_err <= 1e-4 && nll_err <= 1e-4) {
        return Err(format!(
            "loss {} vs reference {} (nll_loss {} vs {})",
            fused.loss, reference.loss, fused.nll_loss, reference.nll_loss
        ));
    }
    if (fused.ntokens, fused.sample_size) != (reference.ntokens, reference.sample_size) {
        return Err(format!(
            "kept tokens {} vs reference {} (sample size {} vs {})",
            fused.ntokens, reference.ntokens, fused.sample_size, reference.sample_size
        ));
    }
    if fused.grad_logits.size() != reference.grad_logits.size() {
        return Err(format!("gradient shape {:?} vs {:?}", fused.grad_logits.size(), reference.grad_logits.size()));
    }
    let want = reference.grad_logits.to_kind(Kind::Double);
    let diff = (fused.grad_logits.to_kind(Kind::Double) - &want).abs();
    let err = diff.max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]).max(0.1);
    let tol = grad_tolerance(fused.grad_logits.kind());
    // A NaN anywhere is a difference too.
    if err.is_nan() || err > tol * scale {
        let at = diff.flatten(0, -1).argmax(0, false).int64_value(&[]);
        let v = want.size()[2];
        return Err(format!(
            "gradient max abs error {err:.3e} (tolerance {:.1e}) at row {}, id {}",
            tol * scale,
            at / v,
            at % v
        ));
    }
    Ok(format!(
        "loss {:.6} vs reference {:.6}, gradient max abs error {err:.2e} of {scale:.2e}",
        fused.loss, reference.loss
    ))
}

/// Ok(agreement) or Err(difference): the fused loss on `logits`/`target` against the
/// reference, a launch failure of the fused kernel counting as a difference.
/// An error of the reference itself (bad input) is the outer error.
pub fn check(
    opts: &ElOptions,
    logits: &Tensor,
    target: &Tensor,
    update_num: i64,
    corrupt: bool,
) -> Result<Result<String, String>> {
    let batch = ElBatch { logits, target, conf: None, constraint_masks: None, update_num };
    let reference =
        encouraging_loss(opts, &batch, ElImpl::Reference).context("the reference loss of the self-check")?;
    let fused = match encouraging_loss(opts, &batch, ElImpl::Fused) {
        Ok(out) => out,
        Err(e) => return Ok(Err(format!("the fused loss failed: {e}"))),
    };
    let fused = if corrupt { corrupted(fused) } else { fused };
    Ok(compare(&fused, &reference))
}

/// The test hook's wrong result: one gradient entry off by a lot.
fn corrupted(mut out: ElOutput) -> ElOutput {
    let g = out.grad_logits.detach().copy();
    let _ = g.flatten(0, -1).get(0).g_add_scalar_(1.0);
    out.grad_logits = g;
    out
}
