//! The LR schedule, the total-updates computation and the optimiser flags.

use clap::Parser;
use elfin_trainer::optim::{batches_per_rank, parse_betas, total_num_updates, AdamBetas, OptimArgs, PolynomialDecay};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    optim: OptimArgs,
}

fn args(extra: &[&str]) -> OptimArgs {
    Cli::try_parse_from(std::iter::once("test").chain(extra.iter().copied())).expect("flags parse").optim
}

#[test]
fn total_updates_match_the_reference_sizes() {
    // Caption: 566,747 rows over 4 ranks, batch 8, update-freq 4, 2 epochs.
    let caption = batches_per_rank(566_747, 4, 8);
    assert_eq!(caption, 17_711);
    assert_eq!(total_num_updates(caption, 4, 2), 8_856);
    // RefCOCO: 120,624 rows, batch 4, update-freq 8, 10 epochs.
    let refcoco = batches_per_rank(120_624, 4, 4);
    assert_eq!(refcoco, 7_539);
    assert_eq!(total_num_updates(refcoco, 8, 10), 9_430);
    // A short last group per epoch still counts as one update.
    assert_eq!(total_num_updates(9, 4, 3), 9);
}

#[test]
fn warmup_ratio_schedule_starts_at_zero_peaks_and_ends_at_zero() {
    let a = args(&["--lr", "1e-5", "--warmup-ratio", "0.06"]);
    let s = PolynomialDecay::from_args(&a, 8_856).unwrap();
    assert_eq!(s.warmup_updates, 531);
    assert_eq!(s.total_updates, 8_856);
    assert_eq!(s.describe(), format!("Total steps 8856, warmup steps 531, warmup_factor {}", 1.0 / 531.0));
    // The first update runs at LR 0.
    assert_eq!(s.lr(0), 0.0);
    assert!((s.lr(1) - 1e-5 / 531.0).abs() < 1e-18);
    assert_eq!(s.lr(531), 1e-5);
    let mid = 531 + (8_856 - 531) / 2;
    let expected_mid = 1e-5 * (1.0 - (mid - 531) as f64 / (8_856 - 531) as f64);
    assert!((s.lr(mid) - expected_mid).abs() < 1e-18);
    assert!(s.lr(8_855) > 0.0 && s.lr(8_855) < 1e-8);
    assert_eq!(s.lr(8_856), 0.0);
    assert_eq!(s.lr(10_000), 0.0);
    // RefCOCO: int(9430 × 0.06) = 565 (floor, not round).
    let r = PolynomialDecay::from_args(&args(&["--lr", "3e-5", "--warmup-ratio", "0.06"]), 9_430).unwrap();
    assert_eq!(r.warmup_updates, 565);
}

#[test]
fn without_ratio_the_explicit_total_power_and_end_lr_apply() {
    let a = args(&[
        "--lr",
        "1.0",
        "--warmup-updates",
        "10",
        "--total-num-update",
        "110",
        "--end-learning-rate",
        "0.1",
        "--power",
        "2",
    ]);
    let s = PolynomialDecay::from_args(&a, 999).unwrap();
    assert_eq!((s.warmup_updates, s.total_updates), (10, 110));
    assert_eq!(s.lr(5), 0.5);
    assert_eq!(s.lr(10), 1.0);
    assert!((s.lr(60) - (0.9 * 0.25 + 0.1)).abs() < 1e-12);
    assert_eq!(s.lr(110), 0.1);
    // No warmup: the decay starts at the peak.
    let n = PolynomialDecay::from_args(&args(&["--lr", "2", "--total-num-update", "4"]), 0).unwrap();
    assert_eq!(n.lr(0), 2.0);
    assert_eq!(n.lr(2), 1.0);
}

#[test]
fn flags_default_as_the_reference_and_parse_python_tuples() {
    let d = args(&[]);
    assert_eq!(d.adam_betas, AdamBetas(0.9, 0.999));
    assert_eq!((d.adam_eps, d.weight_decay, d.lr, d.clip_norm), (1e-8, 0.0, 0.25, 0.0));
    assert_eq!((d.warmup_ratio, d.warmup_updates, d.total_num_update), (0.0, 0, 1_000_000));
    assert_eq!((d.end_learning_rate, d.power), (0.0, 1.0));
    assert_eq!((d.fp16_init_scale, d.min_loss_scale, d.fp16_scale_window), (128.0, 1e-4, None));
    assert!(!d.fp16 && !d.bf16);

    let ofa = args(&[
        "--optimizer=adam",
        "--adam-betas=(0.9,0.999)",
        "--adam-eps=1e-08",
        "--weight-decay=0.01",
        "--lr-scheduler=polynomial_decay",
        "--clip-norm=1.0",
        "--fp16",
        "--fp16-scale-window=512",
    ]);
    assert_eq!(ofa.adam_betas, AdamBetas(0.9, 0.999));
    assert_eq!(ofa.fp16_scale_window, Some(512));
    assert!(ofa.fp16 && ofa.uses_loss_scaler());

    assert_eq!(parse_betas(" (0.8, 0.98) "), Ok(AdamBetas(0.8, 0.98)));
    assert!(parse_betas("(0.9)").unwrap_err().contains("two betas"));
    assert!(parse_betas("(0.9, x)").unwrap_err().contains("\"x\""));
    assert!(Cli::try_parse_from(["test", "--fp16", "--bf16"]).is_err());
    assert!(Cli::try_parse_from(["test", "--optimizer", "sgd"]).is_err());
}
