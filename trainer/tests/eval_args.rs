//! The validation flags and `--eval-args` parsing.

use clap::Parser;
use elfin_trainer::eval::args::parse_generation_args;
use elfin_trainer::eval::{EvalArgs, GenerationArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    eval: EvalArgs,
}

fn parse(args: &[&str]) -> Result<EvalArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("elfin-train").chain(args.iter().copied())).map(|c| c.eval)
}

#[test]
fn caption_script_flags() {
    let e = parse(&[
        "--eval-cider",
        "--eval-cider-cached-tokens=coco-valid-words.json",
        r#"--eval-args={"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}"#,
        "--fixed-validation-seed=7",
        "--validate-interval=1",
        "--validate-interval-updates=500",
    ])
    .unwrap();
    e.validate().unwrap();
    assert!(e.eval_cider && !e.eval_acc);
    let g = &e.eval_args;
    assert_eq!((g.beam, g.max_len_b, g.no_repeat_ngram_size, g.min_len), (5, 16, 3, 1));
    assert_eq!((g.max_len_a, g.lenpen, g.unkpen, g.temperature), (0.0, 1.0, 0.0, 1.0));
    assert_eq!(g.max_len(80), 16);
    assert_eq!((e.validate_interval_updates, e.fixed_validation_seed), (500, Some(7)));
    assert_eq!(e.batch_size_valid, None);
}

#[test]
fn refcoco_script_flags_and_defaults() {
    let e = parse(&["--eval-acc", r#"--eval-args={"beam":5,"min_len":4,"max_len_a":0,"max_len_b":4}"#]).unwrap();
    e.validate().unwrap();
    assert_eq!((e.eval_args.min_len, e.eval_args.max_len_b, e.eval_args.no_repeat_ngram_size), (4, 4, 0));
    let defaults = parse(&[]).unwrap();
    assert_eq!(defaults.eval_args, GenerationArgs::default());
    assert_eq!(defaults.eval_args.max_len_b, 200);
    assert_eq!((defaults.validate_interval, defaults.validate_interval_updates), (1, 0));
}

#[test]
fn bad_eval_args_are_explained() {
    let err = parse_generation_args(r#"{"beam":5,"max_len":4}"#).unwrap_err();
    assert!(err.contains("max_len") && err.contains("max_len_b"), "{err}");
    assert!(parse(&["--eval-args=beam=5"]).is_err());
    let both = parse(&["--eval-acc", "--eval-cider"]).unwrap();
    assert!(both.validate().is_err());
    let zero_beam = parse(&[r#"--eval-args={"beam":0}"#]).unwrap();
    assert!(zero_beam.validate().is_err());
}
