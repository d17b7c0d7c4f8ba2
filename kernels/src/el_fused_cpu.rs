//! The fused CPU implementation: per row of logits, a statistics sweep
//! (max, Σe^(z−max), Σz, count, argmax), then for the kept rows a sweep that
//! sums the bonus and the gradient's row constant, and a sweep that writes
//! d(loss)/d(logits) straight into the output. The row (238 KB at V = 59457)
//! stays in the core's L2 between the sweeps, so memory sees one read of the
//! logits and one write of the gradient. Rows are spread over rayon's threads;
//! nothing of size N×V is allocated besides the gradient.
//!
//! Sums use explicit lanes so that they vectorise (the compiler may not
//! reorder floating-point sums by itself), and the loops are compiled a
//! second time with AVX2 enabled, chosen at run time.

use crate::el_input::{check, Checked, ElBatch};
use crate::el_options::{ElError, ElOptions, ElOutput};
use crate::el_plan::{plan, totals, Job, PassConsts, RowStats, RowSums, Side};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

const LANES: usize = 8;

/// Which ids of each row are allowed (nonzero bytes).
enum Allowed<'a> {
    /// One mask for every row: all ids, or a constraint range.
    Shared(Vec<u8>),
    /// Per-token masks [B·T·V].
    PerRow(&'a [u8]),
}

impl Allowed<'_> {
    fn row(&self, row: usize, v: usize) -> &[u8] {
        match self {
            Allowed::Shared(mask) => mask,
            Allowed::PerRow(masks) => &masks[row * v..(row + 1) * v],
        }
    }
}

/// Runs `body` compiled with AVX2+FMA when the CPU has them (same results:
/// Rust never contracts a·b + c into an FMA by itself).
macro_rules! with_simd {
    ($name:ident, fn($($arg:ident: $ty:ty),*) -> $ret:ty, $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $name($($arg: $ty),*) -> $ret {
            $body
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { $name($($arg),*) };
        }
        $body
    }};
}

fn row_stats(z: &[f32], mask: &[u8], target: usize) -> RowStats {
    with_simd!(row_stats_simd, fn(z: &[f32], mask: &[u8], target: usize) -> RowStats, row_stats_body(z, mask, target))
}

#[inline(always)]
fn row_stats_body(z: &[f32], mask: &[u8], target: usize) -> RowStats {
    let v = z.len();
    assert_eq!(mask.len(), v);
    let full = v / LANES * LANES;
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    for c in (0..full).step_by(LANES) {
        for j in 0..LANES {
            let zi = if mask[c + j] != 0 { z[c + j] } else { f32::NEG_INFINITY };
            lane_max[j] = if zi > lane_max[j] { zi } else { lane_max[j] };
        }
    }
    let mut max = lane_max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for i in full..v {
        if mask[i] != 0 {
            max = max.max(z[i]);
        }
    }
    let mut sum_exp = [0f64; LANES];
    let mut sum_z = [0f64; LANES];
    let mut count = [0f64; LANES];
    let mut add = |i: usize, j: usize| {
        let ok = mask[i] != 0;
        let zi = if ok { z[i] } else { max };
        let e = crate::el_math::exp_f32(zi - max);
        sum_exp[j] += if ok { e as f64 } else { 0.0 };
        sum_z[j] += if ok { zi as f64 } else { 0.0 };
        count[j] += ok as u8 as f64;
    };
    for c in (0..full).step_by(LANES) {
        for j in 0..LANES {
            add(c + j, j);
        }
    }
    for i in full..v {
        add(i, 0);
    }
    let argmax = (0..v).find(|&i| mask[i] != 0 && z[i] == max).unwrap_or(0) as i64;
    RowStats {
        max,
        sum_exp: sum_exp.iter().sum(),
        sum_logits: sum_z.iter().sum(),
        allowed: count.iter().sum(),
        target_logit: z[target],
        argmax,
    }
}

/// One kept row's logits and mask, and its R-Drop partner's.
#[derive(Clone, Copy)]
struct RowData<'a> {
    z: &'a [f32],
    mask: &'a [u8],
    partner: Option<(&'a [f32], &'a [u8])>,
}

/// The per-id quantities of the bonus-and-gradient sweeps at id i:
/// (q = softmax, b(p), b'(p)·p, KL value, KL slope). Disallowed ids give zeros.
#[inline(always)]
fn per_id(c: &PassConsts, job: &Job, row: &RowData, i: usize) -> (f32, f32, f32, f32, f32) {
    let ok = row.mask[i] != 0;
    let zi = if ok { row.z[i] } else { job.side.max };
    let (x, l, p) = PassConsts::log_prob(&job.side, zi);
    let q = if job.side.conf == 1.0 { p } else { crate::el_math::exp_f32(x) };
    let (b, d) = c.bonus.eval(p);
    let (kl, kl_slope) = match (row.partner, job.partner) {
        (Some((pz, pmask)), Some(side)) => {
            let both = ok && pmask[i] != 0;
            let (_, lp, pp) = PassConsts::log_prob(&side, if both { pz[i] } else { side.max });
            let diff = l - lp;
            if both {
                ((p - pp) * diff, p * diff + p - pp)
            } else {
                (0.0, 0.0)
            }
        }
        _ => (0.0, 0.0),
    };
    if ok {
        (q, b, d, kl, kl_slope)
    } else {
        (0.0, 0.0, 0.0, 0.0, 0.0)
    }
}

fn kept_row(c: &PassConsts, job: &Job, row: &RowData, grad: &mut [f32]) -> RowSums {
    with_simd!(
        kept_row_simd,
        fn(c: &PassConsts, job: &Job, row: &RowData, grad: &mut [f32]) -> RowSums,
        kept_row_body(c, job, row, grad)
    )
}

#[inline(always)]
fn kept_row_body(c: &PassConsts, job: &Job, row: &RowData, grad: &mut [f32]) -> RowSums {
    let v = row.z.len();
    assert!(row.mask.len() == v && grad.len() == v);
    if let Some((pz, pmask)) = row.partner {
        assert!(pz.len() == v && pmask.len() == v);
    }
    let full = v / LANES * LANES;
    let mut bonus_all = [0f64; LANES];
    let mut slope = [0f64; LANES];
    let mut kl = [0f64; LANES];
    let mut kl_slope = [0f64; LANES];
    let mut add = |i: usize, j: usize| {
        let (_, b, d, k, ks) = per_id(c, job, row, i);
        bonus_all[j] += b as f64;
        slope[j] += d as f64;
        kl[j] += k as f64;
        kl_slope[j] += ks as f64;
    };
    for base in (0..full).step_by(LANES) {
        for j in 0..LANES {
            add(base + j, j);
        }
    }
    for i in full..v {
        add(i, 0);
    }
    let (_, _, p_target) = PassConsts::log_prob(&job.side, row.z[job.target]);
    let target_slope = c.bonus.eval(p_target).1;
    let s_rest = c.slope_sum_rest(slope.iter().sum(), kl_slope.iter().sum(), target_slope);
    for (i, g) in grad.iter_mut().enumerate() {
        let (q, _, d, _, ks) = per_id(c, job, row, i);
        *g = c.grad_at(job, s_rest, row.mask[i] != 0, i == job.target, q, d, ks);
    }
    grad[job.target] += c.target_extra(job, target_slope);
    RowSums { bonus_all: bonus_all.iter().sum(), kl: kl.iter().sum() }
}

/// A read-only view of a contiguous CPU tensor's elements.
///
/// SAFETY: `t` must be contiguous, on the CPU and hold `T`s; the slice lives as long as `t`.
unsafe fn host_slice<T>(t: &Tensor) -> &[T] {
    let n = t.numel();
    if n == 0 {
        return &[];
    }
    std::slice::from_raw_parts(t.data_ptr() as *const T, n)
}

pub fn forward_backward(opts: &ElOptions, batch: &ElBatch) -> Result<ElOutput, ElError> {
    let checked = check(opts, batch)?;
    let Checked { b, t, v, .. } = checked;
    let logits = batch.logits.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let masks = batch
        .constraint_masks
        .map(|m| m.to_device(Device::Cpu).to_kind(if m.kind() == Kind::Bool { Kind::Bool } else { Kind::Uint8 }).contiguous());
    // SAFETY: contiguous CPU tensors of f32 and of one-byte bools/u8, alive for this function.
    let z_all: &[f32] = unsafe { host_slice(&logits) };
    let allowed = match &masks {
        Some(m) => Allowed::PerRow(unsafe { host_slice::<u8>(m) }),
        None => Allowed::Shared(match opts.constraint_range {
            None => vec![1; v],
            Some((s, e)) => (0..v).map(|i| (i < 4 || (s as usize..e as usize).contains(&i)) as u8).collect(),
        }),
    };
    let z_row = |row: usize| &z_all[row * v..(row + 1) * v];

    let stats: Vec<RowStats> = checked
        .candidates
        .par_iter()
        .map(|&row| row_stats(z_row(row), allowed.row(row, v), checked.target[row] as usize))
        .collect();
    let plan = plan(opts, &checked, &stats, masks.is_some(), batch.update_num);
    let consts = PassConsts::new(opts, v);

    let mut job_of_row = vec![usize::MAX; b * t];
    for (k, job) in plan.jobs.iter().enumerate() {
        job_of_row[job.side.row] = k;
    }
    let grad = Tensor::empty([b as i64, t as i64, v as i64], (Kind::Float, Device::Cpu));
    let mut sums = vec![RowSums::default(); plan.jobs.len()];
    if b * t * v > 0 {
        // SAFETY: `grad` was just allocated contiguous with b·t·v f32s and nothing else refers to it.
        let grad_all = unsafe { std::slice::from_raw_parts_mut(grad.data_ptr() as *mut f32, b * t * v) };
        let done: Vec<(usize, RowSums)> = grad_all
            .par_chunks_mut(v)
            .enumerate()
            .filter_map(|(row, g)| {
                let k = job_of_row[row];
                if k == usize::MAX {
                    g.fill(0.0);
                    return None;
                }
                let job = &plan.jobs[k];
                let data = RowData {
                    z: z_row(row),
                    mask: allowed.row(row, v),
                    partner: job.partner.map(|p: Side| (z_row(p.row), allowed.row(p.row, v))),
                };
                Some((k, kept_row(&consts, job, &data, g)))
            })
            .collect();
        for (k, s) in done {
            sums[k] = s;
        }
    }
    let (loss, nll_loss, ntokens, sample_size) = totals(opts, &checked, &plan, &sums);
    let grad_logits = if batch.logits.kind() == Kind::Float && batch.logits.device() == Device::Cpu {
        grad
    } else {
        grad.to_kind(batch.logits.kind()).to_device(batch.logits.device())
    };
    Ok(ElOutput {
        loss,
        nll_loss,
        ntokens,
        sample_size,
        n_correct: opts.report_accuracy.then_some(plan.n_correct),
        total: opts.report_accuracy.then_some(plan.total),
        grad_logits,
    })
}
