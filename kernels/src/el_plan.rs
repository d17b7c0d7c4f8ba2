//! The host-side middle of the fused implementations: from per-row
//! statistics of the logits to the label-smoothed CE, the drop-worst/best
//! selection and the per-row jobs of the bonus-and-gradient pass; then the
//! final sums. The CPU loop and the CUDA kernel share it, so they differ only
//! in how they sweep the logits.

use crate::el_input::Checked;
use crate::el_math::{exp_f32, Bonus};
use crate::el_options::{ElOptions, ElOutput};
use tch::Tensor;

/// What the statistics sweep finds in one row (over the allowed ids).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RowStats {
    pub max: f32,
    pub sum_exp: f64,
    pub sum_logits: f64,
    pub allowed: f64,
    pub target_logit: f32,
    pub argmax: i64,
}

/// How a row's log-probabilities are formed: ℓ_v = conf · ((z_v − max) − ln_sum).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Side {
    pub row: usize,
    pub max: f32,
    pub ln_sum: f32,
    pub conf: f32,
}

/// One kept row of the bonus-and-gradient pass.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Job {
    pub side: Side,
    pub target: usize,
    /// ε' of this row (depends on the allowed set).
    pub eps_row: f32,
    pub allowed: f32,
    /// R-Drop: the row of the other copy of this token.
    pub partner: Option<Side>,
}

/// Constants of the bonus-and-gradient pass.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PassConsts {
    pub eps: f32,
    /// ε / V with the full V, as the reference weights the smoothed bonus.
    pub eps_over_v: f32,
    pub bonus: Bonus,
    /// reg_alpha / 2.
    pub half_alpha: f32,
}

impl PassConsts {
    pub fn new(opts: &ElOptions, v: usize) -> PassConsts {
        PassConsts {
            eps: opts.label_smoothing as f32,
            eps_over_v: (opts.label_smoothing / v as f64) as f32,
            bonus: Bonus::new(opts.log_end),
            half_alpha: (opts.reg_alpha / 2.0) as f32,
        }
    }

    /// ℓ = conf·x with x = (z − max) − ln_sum, and p = e^ℓ.
    #[inline(always)]
    pub fn log_prob(side: &Side, z: f32) -> (f32, f32, f32) {
        let x = (z - side.max) - side.ln_sum;
        let l = side.conf * x;
        (x, l, exp_f32(l))
    }

    /// The part of Σ_v dL/dℓ_v that does not involve ε' (B1 = Σ b'(p)p, K1 = Σ of the KL slopes).
    ///
    /// The ε' terms are kept apart because ε' is huge (ε / 1e-6) when a mask allows one id only;
    /// grouped as ε'·(q_v·(allowed − 1) − [v allowed] + [v = target]) they cancel exactly there.
    pub fn slope_sum_rest(&self, b1: f64, k1: f64, target_slope: f32) -> f32 {
        let eps = self.eps as f64;
        (self.eps_over_v as f64 * b1 + self.half_alpha as f64 * k1 - (1.0 - eps) + (1.0 - eps) * target_slope as f64)
            as f32
    }

    /// dL/dz_v at an id (the target also gets `target_extra`): q = softmax, d = b'(p)p, kl_slope from R-Drop.
    #[inline(always)]
    pub fn grad_at(&self, job: &Job, s_rest: f32, ok: bool, is_target: bool, (q, d, kl_slope): (f32, f32, f32)) -> f32 {
        let eps_part = job.eps_row * (q * (job.allowed - 1.0) - ok as u8 as f32 + is_target as u8 as f32);
        job.side.conf * (eps_part + self.eps_over_v * d + self.half_alpha * kl_slope - q * s_rest)
    }

    /// The extra dL/dz at the target id beyond `grad_at`.
    pub fn target_extra(&self, job: &Job, target_slope: f32) -> f32 {
        job.side.conf * (1.0 - self.eps) * (target_slope - 1.0)
    }
}

/// What the sweep of one kept row adds up: Σ_v b(p_v) and, for R-Drop, Σ_v (p − p')(ℓ − ℓ').
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RowSums {
    pub bonus_all: f64,
    pub kl: f64,
}

pub(crate) struct Plan {
    /// Kept rows; with R-Drop the first `jobs.len() / 2` are the first copies, paired in order with the rest.
    pub jobs: Vec<Job>,
    pub ce: f64,
    pub nll: f64,
    pub bonus_gold: f64,
    pub n_correct: i64,
    pub total: i64,
}

/// Keeps `floor(n · (1 − ratio))` of `order` (sorted so that the rows to keep come first).
fn keep_count(n: usize, ratio: f64) -> usize {
    (n as f64 * (1.0 - ratio)).floor() as usize
}

/// Indices into `ce` to keep: drop-worst (largest CE) then drop-best (smallest CE).
/// Ties keep the earlier row. With R-Drop the selection is made on the first copies.
fn select(ce: &[f64], opts: &ElOptions, update_num: i64) -> Vec<usize> {
    let n_select = if opts.use_rdrop { ce.len() / 2 } else { ce.len() };
    let mut kept: Vec<usize> = (0..n_select).collect();
    if opts.drop_worst_ratio > 0.0 && update_num > opts.drop_worst_after {
        kept.sort_by(|&a, &b| ce[a].total_cmp(&ce[b]).then(a.cmp(&b)));
        kept.truncate(keep_count(kept.len(), opts.drop_worst_ratio));
    }
    if opts.drop_best_ratio > 0.0 && update_num > opts.drop_best_after {
        kept.sort_by(|&a, &b| ce[b].total_cmp(&ce[a]).then(a.cmp(&b)));
        kept.truncate(keep_count(kept.len(), opts.drop_best_ratio));
    }
    kept.sort_unstable();
    if opts.use_rdrop {
        let second: Vec<usize> = kept.iter().map(|&i| i + n_select).collect();
        kept.extend(second);
    }
    kept
}

pub(crate) fn eps_row(opts: &ElOptions, v: usize, allowed: f64, masked: bool) -> f64 {
    let eps = opts.label_smoothing;
    if masked || opts.constraint_range.is_some() {
        eps / (allowed - 1.0 + 1e-6)
    } else {
        eps / (v as f64 - 1.0)
    }
}

pub(crate) fn plan(opts: &ElOptions, checked: &Checked, stats: &[RowStats], masked: bool, update_num: i64) -> Plan {
    let eps = opts.label_smoothing;
    let consts = PassConsts::new(opts, checked.v);
    let mut ce = Vec::with_capacity(stats.len());
    let mut nll = Vec::with_capacity(stats.len());
    let mut sides = Vec::with_capacity(stats.len());
    let mut n_correct = 0;
    for (&row, st) in checked.candidates.iter().zip(stats) {
        let side = Side { row, max: st.max, ln_sum: st.sum_exp.ln() as f32, conf: checked.conf[row / checked.t] };
        let (_, l_target, _) = PassConsts::log_prob(&side, st.target_logit);
        let sum_log_probs =
            side.conf as f64 * (st.sum_logits - st.allowed * side.max as f64 - st.allowed * side.ln_sum as f64);
        let e_row = eps_row(opts, checked.v, st.allowed, masked);
        let row_nll = -(l_target as f64);
        ce.push((1.0 - eps - e_row) * row_nll - e_row * sum_log_probs);
        nll.push(row_nll);
        sides.push((side, e_row, st.allowed));
        n_correct += (st.argmax == checked.target[row]) as i64;
    }
    let kept = select(&ce, opts, update_num);
    let half = kept.len() / 2;
    let jobs: Vec<Job> = kept
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let (side, e_row, allowed) = sides[i];
            let partner = opts.use_rdrop.then(|| sides[kept[if k < half { k + half } else { k - half }]].0);
            Job {
                side,
                target: checked.target[side.row] as usize,
                eps_row: e_row as f32,
                allowed: allowed as f32,
                partner,
            }
        })
        .collect();
    let bonus_gold = kept
        .iter()
        .map(|&i| {
            let (side, _, _) = sides[i];
            let (_, _, p) = PassConsts::log_prob(&side, stats[i].target_logit);
            consts.bonus.eval(p).0 as f64
        })
        .sum();
    Plan {
        jobs,
        ce: kept.iter().map(|&i| ce[i]).sum(),
        nll: kept.iter().map(|&i| nll[i]).sum(),
        bonus_gold,
        n_correct,
        total: checked.candidates.len() as i64,
    }
}

/// The loss's result from the plan, the per-row sums of the fused pass and
/// its gradient: loss = CE + (1−ε)·gold bonus + (ε/V)·all-class bonus (+ R-Drop KL).
pub(crate) fn output(
    opts: &ElOptions,
    checked: &Checked,
    plan: &Plan,
    sums: &[RowSums],
    grad_logits: Tensor,
) -> ElOutput {
    let eps = opts.label_smoothing;
    let bonus_all: f64 = sums.iter().map(|s| s.bonus_all).sum();
    // Each KL pair is summed by both of its rows; count it once.
    let kl: f64 = sums[..if opts.use_rdrop { sums.len() / 2 } else { 0 }].iter().map(|s| s.kl).sum();
    let loss = plan.ce + (1.0 - eps) * plan.bonus_gold + eps / checked.v as f64 * bonus_all + opts.reg_alpha * 0.5 * kl;
    let ntokens = plan.jobs.len() as i64;
    ElOutput {
        loss,
        nll_loss: plan.nll,
        ntokens,
        sample_size: if opts.sentence_avg { checked.b as i64 } else { ntokens },
        n_correct: opts.report_accuracy.then_some(plan.n_correct),
        total: opts.report_accuracy.then_some(plan.total),
        grad_logits,
    }
}
