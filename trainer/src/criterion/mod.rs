//! The training criterion: OFA's `adjust_label_smoothed_encouraging_loss`
//! with its flags, computed by `elfin_kernels` (fused on CPU and CUDA, or the
//! tch-ops reference), returning the loss and d(loss)/d(logits) so that the
//! training loop back-propagates that gradient without an autograd graph of
//! the loss. See docs/criterion.md.

pub mod cli;

use anyhow::{Context, Result};
use elfin_kernels::{encouraging_loss, parse_constraint_range, ElBatch, ElError, ElImpl, ElOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Tensor};

/// Which implementation computes the loss.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CriterionImpl {
    /// Fused (CPU loop or CUDA kernel by the logits' device); the reference if the CUDA kernel cannot load.
    #[default]
    Auto,
    /// tch ops with autograd (slow, several N×V buffers): the yardstick.
    Reference,
    /// The fused implementation, failing rather than falling back.
    Fused,
}

/// The criterion's flags, named and defaulted as in OFA (`--criterion adjust_label_smoothed_encouraging_loss`).
#[derive(clap::Args, Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CriterionArgs {
    /// Label smoothing ε (mass spread over the other ids).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Above this probability the bonus ln(1 − p) continues as its tangent line; 1.0 = the full bonus.
    #[arg(long, default_value_t = 0.75)]
    pub log_end: f64,
    /// Fraction of target tokens with the largest label-smoothed CE dropped per batch, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    pub drop_worst_ratio: f64,
    /// Drop-worst acts only once more than this many updates are done.
    #[arg(long, default_value_t = 0)]
    pub drop_worst_after: i64,
    /// Fraction of target tokens with the smallest CE dropped (after drop-worst), in [0, 1).
    /// OFA never applies it (a bug); elfin does, see docs/criterion.md.
    #[arg(long, default_value_t = 0.0)]
    pub drop_best_ratio: f64,
    /// Drop-best acts only once more than this many updates are done.
    #[arg(long, default_value_t = 0)]
    pub drop_best_after: i64,
    /// Ignore the first N target positions of every sentence.
    #[arg(long, default_value_t = 0)]
    pub ignore_prefix_size: i64,
    /// Ignore the eos target of every sentence.
    #[arg(long)]
    pub ignore_eos: bool,
    /// START,END: only ids 0..4 and START..END may be predicted (e.g. the <bin_*> ids for grounding).
    #[arg(long, value_name = "START,END", value_parser = parse_constraint_range_arg)]
    pub constraint_range: Option<String>,
    /// Normalise by sentences instead of tokens (sample_size = number of sentences).
    #[arg(long)]
    pub sentence_avg: bool,
    /// Also count argmax hits over the non-padding targets.
    #[arg(long)]
    pub report_accuracy: bool,
    /// R-Drop: the batch holds every sentence twice ([x; x]); adds reg-alpha × symmetric KL between the copies.
    #[arg(long)]
    pub use_rdrop: bool,
    /// Weight of the R-Drop KL term.
    #[arg(long, default_value_t = 1.0)]
    pub reg_alpha: f64,
    /// Which implementation computes the loss.
    #[arg(long, value_enum, default_value_t = CriterionImpl::Auto, alias = "impl")]
    pub criterion_impl: CriterionImpl,
}

fn parse_constraint_range_arg(text: &str) -> Result<String, String> {
    parse_constraint_range(text).map(|_| text.to_string())
}

impl Default for CriterionArgs {
    fn default() -> Self {
        let o = ElOptions::default();
        CriterionArgs {
            label_smoothing: o.label_smoothing,
            log_end: o.log_end,
            drop_worst_ratio: o.drop_worst_ratio,
            drop_worst_after: o.drop_worst_after,
            drop_best_ratio: o.drop_best_ratio,
            drop_best_after: o.drop_best_after,
            ignore_prefix_size: o.ignore_prefix_size,
            ignore_eos: o.ignore_eos,
            constraint_range: None,
            sentence_avg: o.sentence_avg,
            report_accuracy: o.report_accuracy,
            use_rdrop: o.use_rdrop,
            reg_alpha: o.reg_alpha,
            criterion_impl: CriterionImpl::Auto,
        }
    }
}

/// The criterion's result for one (micro-)batch: summed loss and NLL over the
/// kept tokens, the kept-token count (not the logged `ntokens` of the
/// reference, which counts all non-padding tokens), the normaliser, accuracy
/// counts when asked, and d(loss)/d(logits) of the summed loss.
pub use elfin_kernels::ElOutput as CriterionOutput;

pub struct Criterion {
    options: ElOptions,
    implementation: CriterionImpl,
}

impl Criterion {
    pub fn new(args: &CriterionArgs, padding_idx: i64, eos_idx: i64) -> Result<Criterion> {
        let constraint_range = args
            .constraint_range
            .as_deref()
            .map(parse_constraint_range)
            .transpose()
            .map_err(|msg| ElError::InvalidInput(format!("--constraint-range: {msg}")))?;
        let options = ElOptions {
            label_smoothing: args.label_smoothing,
            log_end: args.log_end,
            drop_worst_ratio: args.drop_worst_ratio,
            drop_worst_after: args.drop_worst_after,
            drop_best_ratio: args.drop_best_ratio,
            drop_best_after: args.drop_best_after,
            ignore_prefix_size: args.ignore_prefix_size,
            ignore_eos: args.ignore_eos,
            constraint_range,
            sentence_avg: args.sentence_avg,
            report_accuracy: args.report_accuracy,
            use_rdrop: args.use_rdrop,
            reg_alpha: args.reg_alpha,
            padding_idx,
            eos_idx,
        };
        options.validate()?;
        Ok(Criterion { options, implementation: args.criterion_impl })
    }

    pub fn options(&self) -> &ElOptions {
        &self.options
    }

    pub fn implementation(&self) -> CriterionImpl {
        self.implementation
    }

    /// From now on the reference computes the loss (the fused one failed its self-check).
    pub fn fall_back_to_reference(&mut self) {
        self.implementation = CriterionImpl::Reference;
    }

    /// Loss and gradient for logits [B, T, V] and targets [B, T]; `conf` [B] weights sentences,
    /// `constraint_masks` [B, T, V] (nonzero = allowed) restrict ids per token.
    pub fn compute(
        &self,
        logits: &Tensor,
        target: &Tensor,
        conf: Option<&Tensor>,
        constraint_masks: Option<&Tensor>,
        update_num: i64,
    ) -> Result<CriterionOutput> {
        let batch = ElBatch { logits, target, conf, constraint_masks, update_num };
        let run = |imp| encouraging_loss(&self.options, &batch, imp);
        Ok(match self.implementation {
            CriterionImpl::Reference => run(ElImpl::Reference),
            CriterionImpl::Fused => run(ElImpl::Fused),
            CriterionImpl::Auto => {
                match run(ElImpl::Fused) {
                    Err(ElError::Cuda(why)) if matches!(logits.device(), Device::Cuda(_)) => {
                        static WARNED: AtomicBool = AtomicBool::new(false);
                        if !WARNED.swap(true, Ordering::Relaxed) {
                            eprintln!("elfin-train: warning: the fused CUDA loss is unavailable ({why}); using the reference ops");
                        }
                        run(ElImpl::Reference)
                    }
                    other => other,
                }
            }
        }?)
    }
}

/// Back-propagates `grad` (d loss / d logits, e.g. `CriterionOutput::grad_logits` scaled as the
/// optimiser needs) into the graph that produced `logits`: the gradient of Σ logits·grad is `grad`.
pub fn backward_with_grad(logits: &Tensor, grad: &Tensor) -> Result<()> {
    let grad = grad.detach().to_kind(logits.kind());
    (logits * grad)
        .sum(tch::Kind::Float)
        .f_backward()
        .context("back-propagating the criterion's gradient into the model")
}
