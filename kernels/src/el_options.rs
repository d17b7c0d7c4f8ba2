//! The options of the encouraging loss, its result, and its errors.
//!
//! The names and defaults follow OFA's `adjust_label_smoothed_encouraging_loss`
//! (see docs/criterion.md for where elfin deliberately differs).

use tch::Tensor;

/// How the loss is configured. `Default` gives the reference's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ElOptions {
    /// ε of the label smoothing.
    pub label_smoothing: f64,
    /// Above this probability the bonus ln(1 − p) is replaced by its tangent; 1.0 keeps the full bonus.
    pub log_end: f64,
    pub drop_worst_ratio: f64,
    /// Drop-worst acts only when `update_num > drop_worst_after`.
    pub drop_worst_after: i64,
    pub drop_best_ratio: f64,
    /// Drop-best acts only when `update_num > drop_best_after`.
    pub drop_best_after: i64,
    pub ignore_prefix_size: i64,
    pub ignore_eos: bool,
    /// Allowed ids are `0..4` and `start..end`; every other logit is masked.
    pub constraint_range: Option<(i64, i64)>,
    pub sentence_avg: bool,
    pub report_accuracy: bool,
    /// The batch holds two copies of each sentence (first half, second half); adds `reg_alpha` × symmetric KL.
    pub use_rdrop: bool,
    pub reg_alpha: f64,
    pub padding_idx: i64,
    pub eos_idx: i64,
}

impl Default for ElOptions {
    fn default() -> Self {
        ElOptions {
            label_smoothing: 0.0,
            log_end: 0.75,
            drop_worst_ratio: 0.0,
            drop_worst_after: 0,
            drop_best_ratio: 0.0,
            drop_best_after: 0,
            ignore_prefix_size: 0,
            ignore_eos: false,
            constraint_range: None,
            sentence_avg: false,
            report_accuracy: false,
            use_rdrop: false,
            reg_alpha: 1.0,
            padding_idx: 1,
            eos_idx: 2,
        }
    }
}

/// Parses `START,END` as the reference's `--constraint-range` does.
pub fn parse_constraint_range(text: &str) -> Result<(i64, i64), String> {
    let (start, end) =
        text.split_once(',').ok_or_else(|| format!("constraint range {text:?} is not START,END (e.g. 58457,59457)"))?;
    let parse =
        |s: &str| s.trim().parse::<i64>().map_err(|_| format!("constraint range {text:?}: {s:?} is not an integer"));
    Ok((parse(start)?, parse(end)?))
}

impl ElOptions {
    /// Checks the options alone; shape-dependent checks happen with the batch.
    pub fn validate(&self) -> Result<(), ElError> {
        let bad = |msg: String| Err(ElError::InvalidInput(msg));
        for (name, ratio) in [("drop-worst-ratio", self.drop_worst_ratio), ("drop-best-ratio", self.drop_best_ratio)] {
            if !(0.0..1.0).contains(&ratio) {
                return bad(format!("--{name} is {ratio}; it must lie in [0, 1)"));
            }
        }
        if !(self.log_end > 0.0 && self.log_end <= 1.0) {
            return bad(format!("--log-end is {}; it must lie in (0, 1] (1.0 = the full bonus)", self.log_end));
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return bad(format!("--label-smoothing is {}; it must lie in [0, 1]", self.label_smoothing));
        }
        if !self.reg_alpha.is_finite() {
            return bad(format!("--reg-alpha is {}; it must be finite", self.reg_alpha));
        }
        if self.ignore_prefix_size < 0 {
            return bad(format!("--ignore-prefix-size is {}; it must be >= 0", self.ignore_prefix_size));
        }
        if let Some((start, end)) = self.constraint_range {
            if !(4 <= start && start < end) {
                return bad(format!(
                    "--constraint-range {start},{end}: need 4 <= START < END (ids 0..4 are always allowed)"
                ));
            }
        }
        Ok(())
    }
}

/// Which implementation computes the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElImpl {
    /// tch ops with autograd, on the logits' device.
    Reference,
    /// The fused CPU loop for CPU logits, the fused CUDA kernel for CUDA logits.
    Fused,
}

/// What the loss returns for one batch.
#[derive(Debug)]
pub struct ElOutput {
    /// Summed loss over the kept tokens, bonus and KL included.
    pub loss: f64,
    /// Summed NLL of the kept tokens.
    pub nll_loss: f64,
    /// Tokens kept after padding removal and drop-worst/best.
    pub ntokens: i64,
    /// `ntokens`, or the number of sentences with `sentence_avg`.
    pub sample_size: i64,
    /// Argmax hits over the non-padding targets (before dropping), with `report_accuracy`.
    pub n_correct: Option<i64>,
    pub total: Option<i64>,
    /// d(loss)/d(logits): same shape, dtype and device as the logits.
    pub grad_logits: Tensor,
}

#[derive(Debug, thiserror::Error)]
pub enum ElError {
    /// Something about the inputs or options is wrong; the message says what.
    #[error("{0}")]
    InvalidInput(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("CUDA: {0}")]
    Cuda(String),
}
