//! Real multi-rank runs: a preset launched by `elfin launch` on 2 CPU ranks,
//! and a SIGTERM to one rank of two (preemption).

mod train_common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use train_common::*;

#[test]
fn a_preset_runs_a_few_updates_on_two_ranks() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(launcher())
        .args(["launch", "--preset", "demo_caption_el", "--nproc-per-node", "2", "--cpu", "--data-root"])
        .arg(root.path())
        .args(["--set", "max_update=3", "--set", r#"eval_args={"beam":2,"max_len_b":4}"#, "--set", "code_dict_size=0"])
        .current_dir(root.path())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let save = root.path().join("demo_checkpoints/caption_el");
    assert!(save.join("checkpoint_last.safetensors").exists(), "{stdout}");
    let text = std::fs::read_to_string(save.join("metrics.jsonl")).unwrap();
    let valid: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "valid")
        .collect();
    assert_eq!(valid.last().unwrap()["num_updates"], 3, "{text}");
    assert!(valid.last().unwrap()["cider"].is_number());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for rank in 0..2 {
        let log = root.path().join(format!("demo_logs/rank-{rank}-{}.log", host.trim()));
        assert!(log.exists(), "{} missing", log.display());
    }
}

#[test]
fn sigterm_to_one_rank_of_two_saves_and_both_exit_with_the_preemption_code() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let save = tmp.path().join("run");
    let mut job = Command::new("mpirun")
        .args(["-np", "2", "--oversubscribe", "-x", "OMP_NUM_THREADS=1", TRAINER])
        .args(train_args(&data, &save, &["--max-update=100000", "--max-epoch=1000"]))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Files, not pipes: a pipe nobody reads would block the ranks once full.
        .stdout(Stdio::from(std::fs::File::create(tmp.path().join("stdout")).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(tmp.path().join("stderr")).unwrap()))
        .spawn()
        .unwrap();
    let metrics = save.join("metrics.jsonl");
    let start = Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|t| t.contains("\"train\"")) {
        if let Some(status) = job.try_wait().unwrap() {
            panic!(
                "the job ended early ({status:?}):\n{}",
                std::fs::read_to_string(tmp.path().join("stderr")).unwrap_or_default()
            );
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = job.kill();
            panic!(
                "no update logged in 120 s:\n{}",
                std::fs::read_to_string(tmp.path().join("stderr")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The ranks are the processes running this command line, mpirun excepted.
    let pgrep = Command::new("pgrep")
        .args(["-f", &format!("elfin-train train .*--save-dir={}", save.display())])
        .output()
        .unwrap();
    let ranks: Vec<i32> = String::from_utf8_lossy(&pgrep.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&pid| pid != job.id() as i32)
        .collect();
    assert_eq!(ranks.len(), 2, "expected two rank processes, found {ranks:?}");
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(ranks[1], libc::SIGTERM) }, 0);

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the job did not stop within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = std::fs::read_to_string(tmp.path().join("stderr")).unwrap();
    assert_eq!(status.code(), Some(75), "mpirun status {status:?}\n{stderr}");
    assert_eq!(stderr.matches("stopped by SIGTERM after saving").count(), 2, "both ranks report the stop:\n{stderr}");
    let saved = model_tensors(&save.join("checkpoint_last.safetensors"));
    assert!(!saved.is_empty());
}

/// Runs `program args` with its stdout a pipe whose reader has already gone.
fn with_closed_stdout(program: &Path, args: &[&str]) -> (Option<i32>, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(program).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (out.status.code(), out.status.signal(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let elfin = launcher();
    let cases: Vec<(&Path, Vec<&str>)> = vec![
        (&elfin, vec!["presets", "show", "demo_refcoco_el"]),
        (&elfin, vec!["presets"]),
        (&elfin, vec!["launch", "--help"]),
        (Path::new(TRAINER), vec!["--version"]),
        (Path::new(TRAINER), vec!["train", "--help"]),
        (Path::new(TRAINER), vec!["model", "--arch", "ofa_micro"]),
    ];
    for (program, args) in cases {
        let (code, signal, stderr) = with_closed_stdout(program, &args);
        assert!(
            code == Some(0) || signal == Some(libc::SIGPIPE),
            "{} {args:?}: exit {code:?}, signal {signal:?}:\n{stderr}",
            program.display()
        );
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

/// `elfin launch` of the caption demo here, with the real trainer.
fn demo_launch(root: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(launcher())
        .args(["launch", "--preset", "demo_caption_el", "--nproc-per-node", "2", "--cpu", "--data-root"])
        .arg(root)
        .args(extra)
        .current_dir(root)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn launch_refuses_what_would_change_nothing_or_cannot_run_before_any_rank_starts() {
    let root = tempfile::tempdir().unwrap();
    let (code, _, stderr) = demo_launch(root.path(), &["--set", "save_dir=/elsewhere"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("did you mean --set save_path=...?"), "{stderr}");
    let (code, _, stderr) = demo_launch(root.path(), &["--set", "max_updates=3"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("did you mean max_update?"), "{stderr}");
    // A bad value: refused by the trainer's own parser in a dry run, before the synthetic data exists.
    let (code, stdout, stderr) = demo_launch(root.path(), &["--set", "lr=abc", "--dry-run"]);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("refused its command line") && stderr.contains("--lr"), "{stderr}");
    assert!(!root.path().join("synth").exists(), "a dry run makes nothing");
    // A missing checkpoint, in a real launch: no rank starts, no log is written.
    let (code, _, stderr) =
        demo_launch(root.path(), &["--set", "restore_file=/no/such.safetensors", "--log-dir", "logs"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/no/such.safetensors does not exist"), "{stderr}");
    assert!(!root.path().join("logs").exists(), "no rank started");
    let (code, stdout, stderr) = demo_launch(root.path(), &["--dry-run"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("check:   ok on 1 host(s)"), "{stdout}");
}
