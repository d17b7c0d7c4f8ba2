//! The fused CPU loop against the tch-ops reference on randomized batches
//! covering every option and their combinations; the reference against
//! finite differences; edge cases and hand-computed values.

use elfin_kernels::{encouraging_loss, ElBatch, ElImpl, ElOptions, ElOutput};
use tch::{Kind, Tensor};

/// A small deterministic generator (SplitMix64) so that each case is reproducible by its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

struct Case {
    opts: ElOptions,
    logits: Tensor,
    target: Tensor,
    conf: Option<Tensor>,
    masks: Option<Tensor>,
    update_num: i64,
}

impl Case {
    fn batch(&self) -> ElBatch<'_> {
        ElBatch {
            logits: &self.logits,
            target: &self.target,
            conf: self.conf.as_ref(),
            constraint_masks: self.masks.as_ref(),
            update_num: self.update_num,
        }
    }
    fn run(&self, imp: ElImpl) -> ElOutput {
        encouraging_loss(&self.opts, &self.batch(), imp).unwrap()
    }
}

/// Targets: each sentence has some tokens, then eos, then padding (pad = 1, eos = 2).
fn random_case(seed: u64) -> Case {
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

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{what}: fused {got}, reference {want} (rel {:e})",
        (got - want).abs() / want.abs().max(1e-30)
    );
}

/// How much float32 rounding of p is magnified in the gradient. With the full bonus (log_end = 1)
/// the slope −p/(1 − p) turns the rounding of p (6e-8) into a relative error of 6e-8/(1 − p) in both
/// implementations alike, so the tolerance grows once 1 − p falls below 1e-2 (until the clamp at 1e-5).
fn conditioning(case: &Case) -> f64 {
    if case.opts.log_end < 1.0 {
        return 1.0;
    }
    let p_max = case.logits.softmax(-1, Kind::Double).max().double_value(&[]);
    (1e-2 / (1.0 - p_max).max(1e-5)).clamp(1.0, 1e3)
}

fn assert_same_within(got: &ElOutput, want: &ElOutput, conditioning: f64, what: &str) {
    assert_close(got.loss, want.loss, &format!("{what} loss"));
    assert_close(got.nll_loss, want.nll_loss, &format!("{what} nll_loss"));
    assert_eq!(got.ntokens, want.ntokens, "{what} ntokens");
    assert_eq!(got.sample_size, want.sample_size, "{what} sample_size");
    assert_eq!((got.n_correct, got.total), (want.n_correct, want.total), "{what} accuracy counts");
    assert_eq!(got.grad_logits.size(), want.grad_logits.size());
    // Each gradient entry is c·(g − q·S) with S of order 1, so float32 cancellation leaves errors of
    // order 1e-7 absolute even where the gradient is tiny: hence the floor of the scale.
    let scale = want.grad_logits.abs().max().double_value(&[]).max(0.1);
    let err = (&got.grad_logits - &want.grad_logits).abs().max().double_value(&[]);
    assert!(
        err <= 1e-5 * scale * conditioning,
        "{what} grad: max abs error {err}, scale {scale}, conditioning {conditioning}"
    );
    assert_eq!(got.grad_logits.isfinite().all().int64_value(&[]), 1, "{what}: gradient not finite");
}

#[test]
fn fused_cpu_equals_the_reference_on_random_batches() {
    let mut seen_tangent = 0;
    for seed in 0..160u64 {
        let case = random_case(seed);
        let what = format!("seed {seed} {:?} update {}", case.opts, case.update_num);
        let want = case.run(ElImpl::Reference);
        let got = case.run(ElImpl::Fused);
        assert_same_within(&got, &want, conditioning(&case), &what);
        seen_tangent += (case.opts.log_end < 1.0) as i32;
    }
    assert!(seen_tangent > 50);
}

#[test]
fn the_reference_gradient_matches_finite_differences() {
    for (log_end, conf, rdrop) in [(0.75, false, false), (1.0, true, false), (0.5, false, true)] {
        tch::manual_seed(3);
        let b = if rdrop { 4 } else { 2 };
        let mut target = vec![3i64, 4, 2, 5, 2, 1];
        if rdrop {
            target.extend_from_within(..);
        }
        let opts = ElOptions { label_smoothing: 0.1, log_end, use_rdrop: rdrop, ..ElOptions::default() };
        let case = Case {
            opts,
            logits: Tensor::randn([b, 3, 7], (Kind::Float, tch::Device::Cpu)) * 2.0,
            target: Tensor::from_slice(&target).view([b, 3]),
            conf: conf.then(|| Tensor::from_slice(&[0.7f32, 1.3])),
            masks: None,
            update_num: 0,
        };
        let grad = case.run(ElImpl::Reference).grad_logits;
        let flat = case.logits.reshape([-1]);
        let h = 1e-2;
        for i in 0..flat.size()[0] {
            let at = |delta: f64| {
                let shifted = Case {
                    logits: (flat.copy().index_add(0, &Tensor::from_slice(&[i]), &Tensor::from_slice(&[delta as f32])))
                        .view_as(&case.logits),
                    ..clone_case(&case)
                };
                shifted.run(ElImpl::Reference).loss
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let g = grad.reshape([-1]).double_value(&[i]);
            assert!(
                (fd - g).abs() <= 2e-3 * (1.0 + g.abs()),
                "log_end {log_end} id {i}: autograd {g}, finite difference {fd}"
            );
        }
    }
}

fn clone_case(c: &Case) -> Case {
    Case {
        opts: c.opts.clone(),
        logits: c.logits.copy(),
        target: c.target.copy(),
        conf: c.conf.as_ref().map(|t| t.copy()),
        masks: c.masks.as_ref().map(|t| t.copy()),
        update_num: c.update_num,
    }
}

fn both(case: &Case) -> ElOutput {
    let want = case.run(ElImpl::Reference);
    assert_same_within(&case.run(ElImpl::Fused), &want, conditioning(case), "fused vs reference");
    want
}

#[test]
fn a_batch_of_only_padding_gives_zero_and_no_nan() {
    let case = Case {
        opts: ElOptions { label_smoothing: 0.1, report_accuracy: true, ..ElOptions::default() },
        logits: Tensor::randn([2, 3, 11], (Kind::Float, tch::Device::Cpu)),
        target: Tensor::ones([2, 3], (Kind::Int64, tch::Device::Cpu)),
        conf: None,
        masks: None,
        update_num: 0,
    };
    for imp in [ElImpl::Reference, ElImpl::Fused] {
        let out = case.run(imp);
        assert_eq!((out.loss, out.nll_loss, out.ntokens, out.sample_size), (0.0, 0.0, 0, 0), "{imp:?}");
        assert_eq!((out.n_correct, out.total), (Some(0), Some(0)));
        assert_eq!(out.grad_logits.abs().max().double_value(&[]), 0.0, "{imp:?}");
    }
}

#[test]
fn certain_predictions_with_the_full_bonus_stay_finite() {
    // p_target = 1 in float32: 1 − p = 0 is clamped to 1e-5, whose gradient is 0.
    let logits = Tensor::zeros([1, 2, 5], (Kind::Float, tch::Device::Cpu));
    let _ = logits.narrow(2, 3, 1).fill_(40.0);
    let case = Case {
        opts: ElOptions { label_smoothing: 0.1, log_end: 1.0, ..ElOptions::default() },
        logits,
        target: Tensor::from_slice(&[3i64, 3]).view([1, 2]),
        conf: None,
        masks: None,
        update_num: 0,
    };
    let out = both(&case);
    assert!(out.loss.is_finite());
    // Each token: nll ≈ 0, gold bonus ln(1e-5)·0.9, the other ids add ε/V·ln(1 − e^−40) ≈ 0 and the gold again.
    let per_token = (0.9 + 0.1 / 5.0) * (1e-5f64).ln() + 0.1 / 4.0 * 4.0 * 40.0;
    assert!((out.loss - 2.0 * per_token).abs() < 1e-3, "loss {} want {}", out.loss, 2.0 * per_token);
}

#[test]
fn two_ids_and_a_single_token() {
    let mut rng = Rng(9);
    for _ in 0..10 {
        let case = Case {
            opts: ElOptions {
                label_smoothing: rng.pick(&[0.0, 0.1]),
                log_end: rng.pick(&[0.75, 1.0]),
                // Both ids are real targets here, so padding is some other id.
                padding_idx: 5,
                ..ElOptions::default()
            },
            logits: Tensor::randn([1, 1, 2], (Kind::Float, tch::Device::Cpu)) * 3.0,
            target: Tensor::from_slice(&[rng.below(2) as i64]).view([1, 1]),
            conf: None,
            masks: None,
            update_num: 0,
        };
        assert_eq!(both(&case).ntokens, 1);
    }
}

/// One token over two ids with logits (ln r, 0): p_target = r / (r + 1).
fn two_id_case(ratio: f64, opts: ElOptions) -> Case {
    Case {
        opts,
        logits: Tensor::from_slice(&[ratio.ln() as f32, 0.0]).view([1, 1, 2]),
        target: Tensor::from_slice(&[0i64]).view([1, 1]),
        conf: None,
        masks: None,
        update_num: 0,
    }
}

#[test]
fn hand_computed_values() {
    let ln2 = 2f64.ln();
    // p = 0.5, no smoothing, full bonus: −ln p + ln(1 − p) = 0.
    let out = both(&two_id_case(1.0, ElOptions { log_end: 1.0, ..ElOptions::default() }));
    assert!((out.nll_loss - ln2).abs() < 1e-6 && out.loss.abs() < 1e-6, "{out:?}");
    // Same with ε = 0.1 over V = 2: CE = 0.8·ln2 + 0.1·2·ln2 = ln2; bonus = 0.9·(−ln2) + 0.05·2·(−ln2) = −ln2.
    let out = both(&two_id_case(1.0, ElOptions { label_smoothing: 0.1, log_end: 1.0, ..ElOptions::default() }));
    assert!((out.loss).abs() < 1e-6, "{out:?}");
    // p = 0.75 exactly at log_end: still the logarithm: −ln 0.75 + ln 0.25 = −ln 3.
    let out = both(&two_id_case(3.0, ElOptions::default()));
    assert!((out.loss + 3f64.ln()).abs() < 1e-6, "{out:?}");
    // p = 0.9 above log_end 0.75: −ln 0.9 + (0.9 − 0.75)/(0.75 − 1) + ln 0.25 = −1.8809339.
    let out = both(&two_id_case(9.0, ElOptions::default()));
    assert!((out.loss - (-(0.9f64.ln()) - 0.6 + 0.25f64.ln())).abs() < 1e-6, "{out:?}");
    // dL/dℓ_t = −1 + b'(p)·p = −1 − 4·0.9 = −4.6; dL/dz_t = −4.6·(1 − 0.9) = −0.46, dL/dz_other = +0.46.
    let g = Vec::<f32>::try_from(out.grad_logits.reshape([-1])).unwrap();
    assert!((g[0] as f64 + 0.46).abs() < 1e-6 && (g[1] as f64 - 0.46).abs() < 1e-6, "{g:?}");
}

/// 15 non-padding tokens (pad = 1): the c17 oracle layout.
fn fifteen_tokens(opts: ElOptions, update_num: i64) -> Case {
    tch::manual_seed(5);
    let target = [10i64, 44, 12, 35, 26, 27, 2, 31, 46, 38, 6, 2, 1, 1, 32, 12, 2, 1, 1, 1, 1];
    Case {
        opts,
        logits: Tensor::randn([3, 7, 50], (Kind::Float, tch::Device::Cpu)) * 2.0,
        target: Tensor::from_slice(&target).view([3, 7]),
        conf: None,
        masks: None,
        update_num,
    }
}

#[test]
fn drop_worst_and_best_keep_floor_of_n_times_one_minus_ratio() {
    let o = |dw: f64, db: f64| ElOptions {
        label_smoothing: 0.1,
        drop_worst_ratio: dw,
        drop_worst_after: 10,
        drop_best_ratio: db,
        drop_best_after: 20,
        ..ElOptions::default()
    };
    // (worst, best, update, kept): floor(15·0.8) = 12; floor(15·0.7) = 10; then floor(12·0.75) = 9.
    for (dw, db, update, kept) in [
        (0.2, 0.0, 11, 12),
        (0.2, 0.0, 10, 15),
        (0.3, 0.0, 11, 10),
        (0.2, 0.25, 21, 9),
        (0.2, 0.25, 20, 12),
        (0.0, 0.25, 21, 11),
    ] {
        let out = both(&fifteen_tokens(o(dw, db), update));
        assert_eq!(out.ntokens, kept, "worst {dw} best {db} update {update}");
        assert_eq!(out.sample_size, kept);
    }
}

#[test]
fn drop_worst_removes_the_highest_ce_token_and_drop_best_the_lowest() {
    // One awful token (its target logit far below the rest) is the one drop-worst removes:
    // the result equals the batch with that token padded out.
    let case = fifteen_tokens(ElOptions { drop_worst_ratio: 0.05, ..ElOptions::default() }, 1);
    let _ = case.logits.get(0).get(1).get(44).fill_(-30.0);
    let dropped = both(&case);
    assert_eq!(dropped.ntokens, 14);
    let mut padded = clone_case(&case);
    padded.opts.drop_worst_ratio = 0.0;
    let _ = padded.target.get(0).get(1).fill_(1);
    let reference = both(&padded);
    assert_close(dropped.loss, reference.loss, "drop-worst vs padded loss");
    assert_close(dropped.nll_loss, reference.nll_loss, "drop-worst vs padded nll_loss");
    // A near-certain token is the one drop-best removes.
    let case = fifteen_tokens(ElOptions { drop_best_ratio: 0.05, ..ElOptions::default() }, 1);
    let _ = case.logits.get(2).get(0).get(32).fill_(30.0);
    let dropped = both(&case);
    let mut padded = clone_case(&case);
    padded.opts.drop_best_ratio = 0.0;
    let _ = padded.target.get(2).get(0).fill_(1);
    let reference = both(&padded);
    assert_eq!(dropped.ntokens, 14);
    assert_close(dropped.loss, reference.loss, "drop-best vs padded loss");
}

#[test]
fn sentence_avg_counts_sentences() {
    let out = both(&fifteen_tokens(ElOptions { sentence_avg: true, ..ElOptions::default() }, 0));
    assert_eq!((out.ntokens, out.sample_size), (15, 3));
}
