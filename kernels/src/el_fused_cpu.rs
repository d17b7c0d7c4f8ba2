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
use crate::el_plan::{output, plan, Job, PassConsts, RowStats, RowSums, Side};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Lanes of the per-lane sums: long enough that the loop vectoriser takes each block loop.
const LANES: usize = 64;

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

/// Per-lane sums of the statistics sweep.
struct StatsAcc {
    sum_exp: [f64; LANES],
    sum_z: [f64; LANES],
    count: [f64; LANES],
}

impl StatsAcc {
    fn new() -> Self {
        StatsAcc { sum_exp: [0.0; LANES], sum_z: [0.0; LANES], count: [0.0; LANES] }
    }

    #[inline(always)]
    fn add(&mut self, z: f32, mask: u8, max: f32, j: usize) {
        let ok = mask != 0;
        let zi = if ok { z } else { max };
        let e = crate::el_math::exp_f32(zi - max);
        self.sum_exp[j] += if ok { e as f64 } else { 0.0 };
        self.sum_z[j] += if ok { zi as f64 } else { 0.0 };
        self.count[j] += ok as u8 as f64;
    }
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
    for (zc, mc) in z.chunks_exact(LANES).zip(mask.chunks_exact(LANES)) {
        for j in 0..LANES {
            let zi = if mc[j] != 0 { zc[j] } else { f32::NEG_INFINITY };
            lane_max[j] = if zi > lane_max[j] { zi } else { lane_max[j] };
        }
    }
    let mut max = lane_max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for i in full..v {
        if mask[i] != 0 {
            max = max.max(z[i]);
        }
    }
    let mut acc = StatsAcc::new();
    for (zc, mc) in z.chunks_exact(LANES).zip(mask.chunks_exact(LANES)) {
        for j in 0..LANES {
            acc.add(zc[j], mc[j], max, j);
        }
    }
    for i in full..v {
        acc.add(z[i], mask[i], max, 0);
    }
    let argmax = (0..v).find(|&i| mask[i] != 0 && z[i] == max).unwrap_or(0) as i64;
    RowStats {
        max,
        sum_exp: acc.sum_exp.iter().sum(),
        sum_logits: acc.sum_z.iter().sum(),
        allowed: acc.count.iter().sum(),
        target_logit: z[target],
        argmax,
    }
}

/// One kept row's logits and mask, and its R-Drop partner's (empty without R-Drop).
#[derive(Clone, Copy)]
struct RowData<'a> {
    z: &'a [f32],
    mask: &'a [u8],
    partner_z: &'a [f32],
    partner_mask: &'a [u8],
}

/// The per-id quantities of the bonus-and-gradient sweeps at id i:
/// (q = softmax, b(p), b'(p)·p, KL value, KL slope). Disallowed ids give zeros.
/// `UNIT_CONF`: conf = 1, so q = p; `PAIRED`: R-Drop, with a partner row.
#[inline(always)]
fn per_id<const UNIT_CONF: bool, const PAIRED: bool>(
    c: &PassConsts,
    job: &Job,
    row: &RowData,
    partner: &Side,
    i: usize,
) -> (f32, f32, f32, f32, f32) {
    let ok = row.mask[i] != 0;
    let zi = if ok { row.z[i] } else { job.side.max };
    let (x, l, p) = PassConsts::log_prob(&job.side, zi);
    let q = if UNIT_CONF { p } else { crate::el_math::exp_f32(x) };
    let (b, d) = c.bonus.eval(p);
    let (mut kl, mut kl_slope) = (0.0, 0.0);
    if PAIRED {
        let both = ok && row.partner_mask[i] != 0;
        let (_, lp, pp) = PassConsts::log_prob(partner, if both { row.partner_z[i] } else { partner.max });
        let diff = l - lp;
        kl = if both { (p - pp) * diff } else { 0.0 };
        kl_slope = if both { p * diff + p - pp } else { 0.0 };
    }
    if ok {
        (q, b, d, kl, kl_slope)
    } else {
        (0.0, 0.0, 0.0, 0.0, 0.0)
    }
}

/// Per-lane sums of the bonus sweep.
struct BonusAcc {
    bonus_all: [f64; LANES],
    slope: [f64; LANES],
    kl: [f64; LANES],
    kl_slope: [f64; LANES],
}

impl BonusAcc {
    fn new() -> Self {
        BonusAcc { bonus_all: [0.0; LANES], slope: [0.0; LANES], kl: [0.0; LANES], kl_slope: [0.0; LANES] }
    }

    #[inline(always)]
    fn add(&mut self, (_, b, d, k, ks): (f32, f32, f32, f32, f32), j: usize) {
        self.bonus_all[j] += b as f64;
        self.slope[j] += d as f64;
        self.kl[j] += k as f64;
        self.kl_slope[j] += ks as f64;
    }
}

fn kept_row(c: &PassConsts, job: &Job, row: &RowData, grad: &mut [f32]) -> RowSums {
    with_simd!(
        kept_row_simd,
        fn(c: &PassConsts, job: &Job, row: &RowData, grad: &mut [f32]) -> RowSums,
        match (job.side.conf == 1.0, job.partner.is_some()) {
            (true, false) => kept_row_body::<true, false>(c, job, row, grad),
            (false, false) => kept_row_body::<false, false>(c, job, row, grad),
            (true, true) => kept_row_body::<true, true>(c, job, row, grad),
            (false, true) => kept_row_body::<false, true>(c, job, row, grad),
        }
    )
}

#[inline(always)]
fn kept_row_body<const UNIT_CONF: bool, const PAIRED: bool>(
    c: &PassConsts,
    job: &Job,
    row: &RowData,
    grad: &mut [f32],
) -> RowSums {
    let v = row.z.len();
    assert!(row.mask.len() == v && grad.len() == v);
    assert!(!PAIRED || (row.partner_z.len() == v && row.partner_mask.len() == v));
    let partner = job.partner.unwrap_or(job.side);
    let full = v / LANES * LANES;
    let mut acc = BonusAcc::new();
    for base in (0..full).step_by(LANES) {
        for j in 0..LANES {
            acc.add(per_id::<UNIT_CONF, PAIRED>(c, job, row, &partner, base + j), j);
        }
    }
    for i in full..v {
        acc.add(per_id::<UNIT_CONF, PAIRED>(c, job, row, &partner, i), 0);
    }
    let (_, _, p_target) = PassConsts::log_prob(&job.side, row.z[job.target]);
    let target_slope = c.bonus.eval(p_target).1;
    let s_rest = c.slope_sum_rest(acc.slope.iter().sum(), acc.kl_slope.iter().sum(), target_slope);
    for (i, g) in grad.iter_mut().enumerate() {
        let (q, _, d, _, ks) = per_id::<UNIT_CONF, PAIRED>(c, job, row, &partner, i);
        *g = c.grad_at(job, s_rest, row.mask[i] != 0, i == job.target, (q, d, ks));
    }
    grad[job.target] += c.target_extra(job, target_slope);
    RowSums { bonus_all: acc.bonus_all.iter().sum(), kl: acc.kl.iter().sum() }
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
    let masks = batch.constraint_masks.map(|m| {
        m.to_device(Device::Cpu).to_kind(if m.kind() == Kind::Bool { Kind::Bool } else { Kind::Uint8 }).contiguous()
    });
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
                let (partner_z, partner_mask) =
                    job.partner.map_or((&[][..], &[][..]), |p: Side| (z_row(p.row), allowed.row(p.row, v)));
                let data = RowData { z: z_row(row), mask: allowed.row(row, v), partner_z, partner_mask };
                Some((k, kept_row(&consts, job, &data, g)))
            })
            .collect();
        for (k, s) in done {
            sums[k] = s;
        }
    }
    let grad_logits = if batch.logits.kind() == Kind::Float && batch.logits.device() == Device::Cpu {
        grad
    } else {
        grad.to_kind(batch.logits.kind()).to_device(batch.logits.device())
    };
    Ok(output(opts, &checked, &plan, &sums, grad_logits))
}
