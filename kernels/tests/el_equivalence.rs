//! The fused CPU loop against the tch-ops reference on randomized batches
//! covering every option and their combinations; the reference against
//! finite differences; edge cases and hand-computed values.

mod common;

use common::*;
use elfin_kernels::{ElImpl, ElOutput};
use tch::Tensor;

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
    for case in finite_difference_cases() {
        let grad = case.run(ElImpl::Reference).grad_logits;
        let flat = case.logits.reshape([-1]);
        let h = 1e-2;
        for i in 0..flat.size()[0] {
            let at = |delta: f64| {
                let shifted = Case {
                    logits: (flat.copy().index_add(0, &Tensor::from_slice(&[i]), &Tensor::from_slice(&[delta as f32])))
                        .view_as(&case.logits),
                    ..case.copy()
                };
                shifted.run(ElImpl::Reference).loss
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let g = grad.reshape([-1]).double_value(&[i]);
            assert!(
                (fd - g).abs() <= 2e-3 * (1.0 + g.abs()),
                "log_end {} id {i}: autograd {g}, finite difference {fd}",
                case.opts.log_end
            );
        }
    }
}

fn both(case: &Case) -> ElOutput {
    let want = case.run(ElImpl::Reference);
    assert_same_within(&case.run(ElImpl::Fused), &want, conditioning(case), "fused vs reference");
    want
}

#[test]
fn a_batch_of_only_padding_gives_zero_and_no_nan() {
    let case = only_padding();
    for imp in [ElImpl::Reference, ElImpl::Fused] {
        let out = case.run(imp);
        assert_eq!((out.loss, out.nll_loss, out.ntokens, out.sample_size), (0.0, 0.0, 0, 0), "{imp:?}");
        assert_eq!((out.n_correct, out.total), (Some(0), Some(0)));
        assert_eq!(out.grad_logits.abs().max().double_value(&[]), 0.0, "{imp:?}");
    }
}

#[test]
fn certain_predictions_with_the_full_bonus_stay_finite() {
    let out = both(&certain_predictions());
    assert!(out.loss.is_finite());
    // Each token: nll ≈ 0, gold bonus ln(1e-5)·0.9, the other ids add ε/V·ln(1 − e^−40) ≈ 0 and the gold again.
    let per_token = (0.9 + 0.1 / 5.0) * (1e-5f64).ln() + 0.1 / 4.0 * 4.0 * 40.0;
    assert!((out.loss - 2.0 * per_token).abs() < 1e-3, "loss {} want {}", out.loss, 2.0 * per_token);
}

#[test]
fn two_ids_and_a_single_token() {
    for case in two_ids_single_tokens() {
        assert_eq!(both(&case).ntokens, 1);
    }
}

#[test]
fn hand_computed_values() {
    let ln2 = 2f64.ln();
    let [half, half_smoothed, at_log_end, above_log_end] = hand_computed_cases().try_into().ok().unwrap();
    // p = 0.5, no smoothing, full bonus: −ln p + ln(1 − p) = 0.
    let out = both(&half);
    assert!((out.nll_loss - ln2).abs() < 1e-6 && out.loss.abs() < 1e-6, "{out:?}");
    // Same with ε = 0.1 over V = 2: CE = 0.8·ln2 + 0.1·2·ln2 = ln2; bonus = 0.9·(−ln2) + 0.05·2·(−ln2) = −ln2.
    let out = both(&half_smoothed);
    assert!((out.loss).abs() < 1e-6, "{out:?}");
    // p = 0.75 exactly at log_end: still the logarithm: −ln 0.75 + ln 0.25 = −ln 3.
    let out = both(&at_log_end);
    assert!((out.loss + 3f64.ln()).abs() < 1e-6, "{out:?}");
    // p = 0.9 above log_end 0.75: −ln 0.9 + (0.9 − 0.75)/(0.75 − 1) + ln 0.25 = −1.8809339.
    let out = both(&above_log_end);
    assert!((out.loss - (-(0.9f64.ln()) - 0.6 + 0.25f64.ln())).abs() < 1e-6, "{out:?}");
    // dL/dℓ_t = −1 + b'(p)·p = −1 − 4·0.9 = −4.6; dL/dz_t = −4.6·(1 − 0.9) = −0.46, dL/dz_other = +0.46.
    let g = Vec::<f32>::try_from(out.grad_logits.reshape([-1])).unwrap();
    assert!((g[0] as f64 + 0.46).abs() < 1e-6 && (g[1] as f64 - 0.46).abs() < 1e-6, "{g:?}");
}

#[test]
fn drop_worst_and_best_keep_floor_of_n_times_one_minus_ratio() {
    for (case, kept) in drop_cases() {
        let out = both(&case);
        let o = &case.opts;
        assert_eq!(
            out.ntokens, kept,
            "worst {} best {} update {}",
            o.drop_worst_ratio, o.drop_best_ratio, case.update_num
        );
        assert_eq!(out.sample_size, kept);
    }
}

#[test]
fn drop_worst_removes_the_highest_ce_token_and_drop_best_the_lowest() {
    // The awful token is the one drop-worst removes: the result equals the batch with that token padded out.
    let case = one_awful_token();
    let dropped = both(&case);
    assert_eq!(dropped.ntokens, 14);
    let mut padded = case.copy();
    padded.opts.drop_worst_ratio = 0.0;
    let _ = padded.target.get(0).get(1).fill_(1);
    let reference = both(&padded);
    assert_close(dropped.loss, reference.loss, "drop-worst vs padded loss");
    assert_close(dropped.nll_loss, reference.nll_loss, "drop-worst vs padded nll_loss");
    // The near-certain token is the one drop-best removes.
    let case = one_certain_token();
    let dropped = both(&case);
    let mut padded = case.copy();
    padded.opts.drop_best_ratio = 0.0;
    let _ = padded.target.get(2).get(0).fill_(1);
    let reference = both(&padded);
    assert_eq!(dropped.ntokens, 14);
    assert_close(dropped.loss, reference.loss, "drop-best vs padded loss");
}

#[test]
fn sentence_avg_counts_sentences() {
    let out = both(&sentence_avg());
    assert_eq!((out.ntokens, out.sample_size), (15, 3));
}
