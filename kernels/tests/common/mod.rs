//! The loss test cases shared by the test files: randomized batches covering
//! every option and their combinations, the edge cases, and the comparison
//! of two results within the float32 tolerances.
#![allow(dead_code)] // each test file uses its own part

use elfin_kernels::{encouraging_loss, ElBatch, ElImpl, ElOptions, ElOutput};
use tch::{Kind, Tensor};

/// A small deterministic generator (SplitMix64) so that each case is reproducible by its seed.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

pub struct Case {
    pub opts: ElOptions,
    pub logits: Tensor,
    pub target: Tensor,
    pub conf: Option<Tensor>,
    pub masks: Option<Tensor>,
    pub update_num: i64,
}

impl Case {
    /// A case without conf weights or masks.
    pub fn plain(opts: ElOptions, logits: Tensor, target: Tensor, update_num: i64) -> Case {
        Case { opts, logits, target, conf: None, masks: None, update_num }
    }
    pub fn batch(&self) -> ElBatch<'_> {
        ElBatch {
            logits: &self.logits,
            target: &self.target,
            conf: self.conf.as_ref(),
            constraint_masks: self.masks.as_ref(),
            update_num: self.update_num,
        }
    }
    pub fn run(&self, imp: ElImpl) -> ElOutput {
        encouraging_loss(&self.opts, &self.batch(), imp).unwrap()
    }
    pub fn copy(&self) -> Case {
        Case {
            opts: self.opts.clone(),
            logits: self.logits.copy(),
            target: self.target.copy(),
            conf: self.conf.as_ref().map(|t| t.copy()),
            masks: self.masks.as_ref().map(|t| t.copy()),
            update_num: self.update_num,
        }
    }
    /// The same case with the logits rounded to `kind` (f32, f16 or bf16).
    pub fn with_logits_in(&self, kind: Kind) -> Case {
        Case { logits: self.logits.to_kind(kind), ..self.copy() }
    }
}

/// Targets: each sentence has some tokens, then eos, then padding (pad = 1, eos = 2).
pub fn random_case(seed: u64) -> Case {
    let mut rng = Rng(seed);
    tch::manual_seed(seed as i64);
    let mut opts = ElOptions {
        label_smoothing: rng.pick(&[0.0, 0.1, 0.3]),
        log_end: rng.pick(&[0.75, 1.0, 0.5, 0.9]),
        ignore_prefix_size: if rng.chance(20) { 1 } else { 0 },
        ignore_eos: rng.chance(20),
        sentence_avg: rng.chance(20),
        report_accuracy: rng.chance(50),
        use_rdrop: rng.chance(20),
        reg_alpha: rng.pick(&[1.0, 0.5]),
        ..ElOptions::default()
    };
    let update_num = rng.pick(&[0, 5, 100]);
    if rng.chance(40) {
        opts.drop_worst_ratio = rng.pick(&[0.05, 0.2, 0.5]);
        opts.drop_worst_after = rng.pick(&[0, 10]);
    }
    if rng.chance(30) {
        opts.drop_best_ratio = rng.pick(&[0.1, 0.3]);
        opts.drop_best_after = rng.pick(&[0, 10]);
    }
    let v = rng.pick(&[2i64, 7, 50, 301]);
    let use_range = v > 20 && rng.chance(25);
    if use_range {
        opts.constraint_range = Some((10, v - 3));
    }
    let use_masks = !use_range && rng.chance(25);
    let b = 1 + rng.below(4) as i64;
    let t = 1 + rng.below(6) as i64;
    let scale = rng.pick(&[1.0, 3.0, 8.0]);
    let b_all = if opts.use_rdrop { 2 * b } else { b };
    let mut target = vec![0i64; (b * t) as usize];
    for s in 0..b as usize {
        let len = rng.below(t as u64 + 1) as usize;
        for p in 0..t as usize {
            target[s * t as usize + p] = if p < len {
                let id = rng.below(v as u64) as i64;
                match opts.constraint_range {
                    Some((start, end)) if !(id < 4 || (start..end).contains(&id)) => start + id % (end - start),
                    _ => id,
                }
            } else if p == len {
                2.min(v - 1)
            } else {
                1
            };
        }
    }
    if opts.use_rdrop {
        target.extend_from_within(..);
    }
    let target = Tensor::from_slice(&target).view([b_all, t]);
    let logits = Tensor::randn([b_all, t, v], (Kind::Float, tch::Device::Cpu)) * scale;
    let conf = rng.chance(30).then(|| Tensor::rand([b_all], (Kind::Float, tch::Device::Cpu)) + 0.5);
    let masks = use_masks.then(|| {
        let m = Tensor::rand([b_all, t, v], (Kind::Float, tch::Device::Cpu)).gt(0.4);
        // The target must stay allowed.
        m.scatter_value(2, &target.unsqueeze(2), 1).to_kind(if rng.chance(50) { Kind::Bool } else { Kind::Uint8 })
    });
    Case { opts, logits, target, conf, masks, update_num }
}

pub fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{what}: got {got}, want {want} (rel {:e})",
        (got - want).abs() / want.abs().max(1e-30)
    );
}

/// How much float32 rounding of p is magnified in the gradient. With the full bonus (log_end = 1)
/// the slope −p/(1 − p) turns the rounding of p (6e-8) into a relative error of 6e-8/(1 − p) in both
/// implementations alike, so the tolerance grows once 1 − p falls below 1e-2 (until the clamp at 1e-5).
pub fn conditioning(case: &Case) -> f64 {
    if case.opts.log_end < 1.0 {
        return 1.0;
    }
    let p_max = case.logits.softmax(-1, Kind::Double).max().double_value(&[]);
    (1e-2 / (1.0 - p_max).max(1e-5)).clamp(1.0, 1e3)
}

/// Everything but the gradient's entries equal; the gradient within `grad_tol` (see assert_same_within).
pub fn assert_same_sums(got: &ElOutput, want: &ElOutput, what: &str) {
    assert_close(got.loss, want.loss, &format!("{what} loss"));
    assert_close(got.nll_loss, want.nll_loss, &format!("{what} nll_loss"));
    assert_eq!(got.ntokens, want.ntokens, "{what} ntokens");
    assert_eq!(got.sample_size, want.sample_size, "{what} sample_size");
    assert_eq!((got.n_correct, got.total), (want.n_correct, want.total), "{what} accuracy counts");
    assert_eq!(got.grad_logits.size(), want.grad_logits.size(), "{what} gradient shape");
    assert_eq!(got.grad_logits.isfinite().all().int64_value(&[]), 1, "{what}: gradient not finite");
}

/// The gradient's largest entry, floored: each entry is c·(g − q·S) with S of order 1, so float32
/// cancellation leaves errors of order 1e-7 absolute even where the gradient is tiny.
pub fn grad_scale(out: &ElOutput) -> f64 {
    out.grad_logits.abs().max().double_value(&[]).max(0.1)
}

pub fn assert_same_within(got: &ElOutput, want: &ElOutput, conditioning: f64, what: &str) {
    assert_same_sums(got, want, what);
    let scale = grad_scale(want);
    let err = (&got.grad_logits - &want.grad_logits).abs().max().double_value(&[]);
    assert!(
        err <= 1e-5 * scale * conditioning,
        "{what} grad: max abs error {err}, scale {scale}, conditioning {conditioning}"
    );
}

/// The three small batches of the finite-difference check: (log_end, with conf, R-Drop).
pub fn finite_difference_cases() -> Vec<Case> {
    [(0.75, false, false), (1.0, true, false), (0.5, false, true)]
        .into_iter()
        .map(|(log_end, conf, rdrop)| {
            tch::manual_seed(3);
            let b = if rdrop { 4 } else { 2 };
            let mut target = vec![3i64, 4, 2, 5, 2, 1];
            if rdrop {
                target.extend_from_within(..);
            }
            let opts = ElOptions { label_smoothing: 0.1, log_end, use_rdrop: rdrop, ..ElOptions::default() };
            Case {
                opts,
                logits: Tensor::randn([b, 3, 7], (Kind::Float, tch::Device::Cpu)) * 2.0,
                target: Tensor::from_slice(&target).view([b, 3]),
                conf: conf.then(|| Tensor::from_slice(&[0.7f32, 1.3])),
                masks: None,
                update_num: 0,
            }
        })
        .collect()
}

pub fn only_padding() -> Case {
    Case::plain(
        ElOptions { label_smoothing: 0.1, report_accuracy: true, ..ElOptions::default() },
        Tensor::randn([2, 3, 11], (Kind::Float, tch::Device::Cpu)),
        Tensor::ones([2, 3], (Kind::Int64, tch::Device::Cpu)),
        0,
    )
}

/// p_target = 1 in float32: 1 − p = 0 is clamped to 1e-5, whose gradient is 0.
pub fn certain_predictions() -> Case {
    let logits = Tensor::zeros([1, 2, 5], (Kind::Float, tch::Device::Cpu));
    let _ = logits.narrow(2, 3, 1).fill_(40.0);
    Case::plain(
        ElOptions { label_smoothing: 0.1, log_end: 1.0, ..ElOptions::default() },
        logits,
        Tensor::from_slice(&[3i64, 3]).view([1, 2]),
        0,
    )
}

/// Ten single tokens over a vocabulary of two.
pub fn two_ids_single_tokens() -> Vec<Case> {
    let mut rng = Rng(9);
    tch::manual_seed(9);
    (0..10)
        .map(|_| {
            Case::plain(
                ElOptions {
                    label_smoothing: rng.pick(&[0.0, 0.1]),
                    log_end: rng.pick(&[0.75, 1.0]),
                    // Both ids are real targets here, so padding is some other id.
                    padding_idx: 5,
                    ..ElOptions::default()
                },
                Tensor::randn([1, 1, 2], (Kind::Float, tch::Device::Cpu)) * 3.0,
                Tensor::from_slice(&[rng.below(2) as i64]).view([1, 1]),
                0,
            )
        })
        .collect()
}

/// One token over two ids with logits (ln r, 0): p_target = r / (r + 1).
pub fn two_id_case(ratio: f64, opts: ElOptions) -> Case {
    Case::plain(
        opts,
        Tensor::from_slice(&[ratio.ln() as f32, 0.0]).view([1, 1, 2]),
        Tensor::from_slice(&[0i64]).view([1, 1]),
        0,
    )
}

/// The two-id cases whose values el_equivalence.rs computes by hand.
pub fn hand_computed_cases() -> Vec<Case> {
    vec![
        two_id_case(1.0, ElOptions { log_end: 1.0, ..ElOptions::default() }),
        two_id_case(1.0, ElOptions { label_smoothing: 0.1, log_end: 1.0, ..ElOptions::default() }),
        two_id_case(3.0, ElOptions::default()),
        two_id_case(9.0, ElOptions::default()),
    ]
}

/// 15 non-padding tokens (pad = 1): the c17 oracle layout.
pub fn fifteen_tokens(opts: ElOptions, update_num: i64) -> Case {
    tch::manual_seed(5);
    let target = [10i64, 44, 12, 35, 26, 27, 2, 31, 46, 38, 6, 2, 1, 1, 32, 12, 2, 1, 1, 1, 1];
    Case::plain(
        opts,
        Tensor::randn([3, 7, 50], (Kind::Float, tch::Device::Cpu)) * 2.0,
        Tensor::from_slice(&target).view([3, 7]),
        update_num,
    )
}

/// Drop-worst/best settings and how many of the fifteen tokens each keeps:
/// (worst, best, update, kept): floor(15·0.8) = 12; floor(15·0.7) = 10; then floor(12·0.75) = 9.
pub fn drop_cases() -> Vec<(Case, i64)> {
    let o = |dw: f64, db: f64| ElOptions {
        label_smoothing: 0.1,
        drop_worst_ratio: dw,
        drop_worst_after: 10,
        drop_best_ratio: db,
        drop_best_after: 20,
        ..ElOptions::default()
    };
    [
        (0.2, 0.0, 11, 12),
        (0.2, 0.0, 10, 15),
        (0.3, 0.0, 11, 10),
        (0.2, 0.25, 21, 9),
        (0.2, 0.25, 20, 12),
        (0.0, 0.25, 21, 11),
    ]
    .into_iter()
    .map(|(dw, db, update, kept)| (fifteen_tokens(o(dw, db), update), kept))
    .collect()
}

/// One awful token (its target logit far below the rest), for drop-worst.
pub fn one_awful_token() -> Case {
    let case = fifteen_tokens(ElOptions { drop_worst_ratio: 0.05, ..ElOptions::default() }, 1);
    let _ = case.logits.get(0).get(1).get(44).fill_(-30.0);
    case
}

/// One near-certain token, for drop-best.
pub fn one_certain_token() -> Case {
    let case = fifteen_tokens(ElOptions { drop_best_ratio: 0.05, ..ElOptions::default() }, 1);
    let _ = case.logits.get(2).get(0).get(32).fill_(30.0);
    case
}

pub fn sentence_avg() -> Case {
    fifteen_tokens(ElOptions { sentence_avg: true, ..ElOptions::default() }, 0)
}

/// Every edge case above, named.
pub fn edge_cases() -> Vec<(String, Case)> {
    let mut cases = vec![
        ("only padding".to_string(), only_padding()),
        ("certain predictions".to_string(), certain_predictions()),
        ("one awful token".to_string(), one_awful_token()),
        ("one certain token".to_string(), one_certain_token()),
        ("sentence avg".to_string(), sentence_avg()),
    ];
    let groups = [
        ("finite-difference case", finite_difference_cases()),
        ("two ids", two_ids_single_tokens()),
        ("hand-computed", hand_computed_cases()),
        ("drop", drop_cases().into_iter().map(|(c, _)| c).collect()),
    ];
    for (what, group) in groups {
        cases.extend(group.into_iter().enumerate().map(|(i, c)| (format!("{what} {i}"), c)));
    }
    cases
}
