//! `elfin doctor` on this CPU machine, with the real `elfin-train` beside
//! `elfin` (as `make test` builds them): it passes with SKIP lines for the
//! GPU parts, reports as JSON, checks CPU ranks over MPI when asked, and
//! fails (exit 1, with what to do) when a check fails.

use std::process::{Command, Output};

fn doctor(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elfin"));
    cmd.arg("doctor").args(args).env("OMP_NUM_THREADS", "1");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("elfin doctor runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn doctor_passes_on_a_cpu_machine_with_skip_lines_for_the_gpu() {
    let out = doctor(&[], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "PASS  elfin: elfin ",
        "PASS  Open MPI: ",
        "PASS  elfin-train: ",
        "SKIP  CUDA: libcuda not found",
        "PASS  fused loss on CPU: ",
        "SKIP  local all-reduce: 0 GPU(s) visible",
        "SKIP  MPI between hosts: no --hostfile given",
    ] {
        assert!(text.lines().any(|l| l.starts_with(line)), "no line starting `{line}`:\n{text}");
    }
    assert!(text.lines().all(|l| ["PASS  ", "SKIP  "].iter().any(|s| l.starts_with(s))), "{text}");
}

#[test]
fn doctor_json_lists_every_check_and_measures_cpu_ranks_over_mpi() {
    let out = doctor(&["--json", "--nproc-per-node", "2"], &[]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    let checks = report["checks"].as_array().unwrap();
    let status =
        |name: &str| checks.iter().find(|c| c["check"] == name).map(|c| c["status"].as_str().unwrap().to_string());
    assert_eq!(status("CUDA").as_deref(), Some("SKIP"), "{report}");
    assert_eq!(status("fused loss on CPU").as_deref(), Some("PASS"), "{report}");
    assert_eq!(status("collectives 2 ranks Cpu").as_deref(), Some("PASS"), "{report}");
    let bw = checks.iter().find(|c| c["check"] == "all-reduce bandwidth 2 ranks Cpu").expect("a bandwidth line");
    let gbps: f64 = bw["detail"].as_str().unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(gbps > 0.0, "{bw}");
    assert!(checks.iter().all(|c| c["status"] != "FAIL"), "{report}");
}

#[test]
fn a_failing_check_makes_doctor_exit_1_with_what_to_do() {
    // The trainer's test-only hook makes its fused loss wrong.
    let out = doctor(&[], &[("ELFIN_TEST_CORRUPT_FUSED_LOSS", "0")]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let fail =
        text.lines().position(|l| l.starts_with("FAIL  fused loss on CPU: gradient max abs error")).expect(&text);
    assert!(text.lines().nth(fail + 1).unwrap().starts_with("      fix: "), "{text}");
}
