//! The start-up self-checks of `elfin-train train` on CPU: the fused loss
//! against the reference (with a wrong fused result injected through the
//! test-only hook), the collectives and the first gradient norm on two ranks.

mod train_common;

use std::path::Path;
use std::process::{Command, Output};
use train_common::*;

const CORRUPT: &str = "ELFIN_TEST_CORRUPT_FUSED_LOSS";

fn self_checks(save_dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(save_dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "self_check")
        .collect()
}

fn status_of<'a>(records: &'a [serde_json::Value], check: &str) -> Vec<&'a str> {
    records.iter().filter(|r| r["check"] == check).map(|r| r["status"].as_str().unwrap()).collect()
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_wrong_fused_loss_on_one_rank_makes_every_rank_fall_back_with_one_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let (fallback, reference) = (tmp.path().join("fallback"), tmp.path().join("reference"));
    let run = |save: &Path, extra: &[&str], corrupt: &str| {
        let mut args = vec!["--batch-size=4", "--max-update=2", "--freeze-resnet"];
        args.extend(extra);
        Command::new("mpirun")
            .args(["-np", "2", "--oversubscribe", "-x", "OMP_NUM_THREADS=1", "-x", CORRUPT, TRAINER])
            .args(train_args(&data, save, &args))
            .env(CORRUPT, corrupt)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .output()
            .unwrap()
    };
    let out = run(&fallback, &[], "1");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // One warning per rank, each naming rank 1's difference.
    let warnings: Vec<&str> = all.lines().filter(|l| l.contains("warning: the fused loss differs")).collect();
    assert_eq!(warnings.len(), 2, "{all}");
    // The findings list only rank 1, the one whose result was wrong.
    assert!(warnings.iter().all(|w| w.contains("batch (rank 1: gradient max abs error 1.000e0")), "{all}");
    let records = self_checks(&fallback);
    assert_eq!(status_of(&records, "collectives"), ["pass"], "{records:?}");
    assert_eq!(status_of(&records, "fused_loss"), ["fallback"], "{records:?}");
    assert_eq!(status_of(&records, "gradient_norm"), ["pass"], "{records:?}");
    // After the fallback the reference computes every loss: the same run as with --criterion-impl reference.
    let out = run(&reference, &["--criterion-impl=reference"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(status_of(&self_checks(&reference), "fused_loss").is_empty());
    let (a, b) = (train_records(&fallback), train_records(&reference));
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x["loss"], &x["gnorm"]), (&y["loss"], &y["gnorm"]), "fallback vs reference run");
    }
}

#[test]
fn with_criterion_impl_fused_a_wrong_fused_loss_stops_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let (good, bad) = (tmp.path().join("good"), tmp.path().join("bad"));
    let args = ["--batch-size=4", "--max-update=1", "--freeze-resnet", "--criterion-impl=fused"];
    run_trainer(&train_args(&data, &good, &args));
    assert_eq!(status_of(&self_checks(&good), "fused_loss"), ["pass"]);
    let out = Command::new(TRAINER).args(train_args(&data, &bad, &args)).env(CORRUPT, "all").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr.contains("rank 0: gradient max abs error") && stderr.contains("--criterion-impl fused forbids"),
        "{stderr}"
    );
    assert_eq!(status_of(&self_checks(&bad), "fused_loss"), ["fail"]);
}
