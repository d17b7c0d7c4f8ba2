//! Which checkpoint a run starts from, what the --reset-* flags drop, and
//! a graceful stop on SIGTERM (save, then the documented exit code) versus
//! an immediate exit on a second signal.

use clap::Parser;
use elfin_trainer::checkpoint::policy::plan_save;
use elfin_trainer::checkpoint::{
    load_checkpoint, plan_load, save_checkpoint, should_save, CheckpointArgs, CheckpointState, LoadPlan, Progress,
    RngState, LAST,
};
use elfin_trainer::signals::{self, EXIT_PREEMPTED};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    checkpoint: CheckpointArgs,
}

fn args(extra: &[&str]) -> CheckpointArgs {
    Cli::try_parse_from(["t", "--save-dir", "run"].iter().chain(extra)).unwrap().checkpoint
}

const OFA: [&str; 5] =
    ["--restore-file", "ofa_large.safetensors", "--reset-optimizer", "--reset-dataloader", "--reset-meters"];

#[test]
fn checkpoint_last_in_the_save_dir_wins_over_restore_file() {
    let a = args(&OFA);
    // First launch: the pretrained file, with the reset flags.
    let first = plan_load(&a, |p| p == Path::new("ofa_large.safetensors")).unwrap();
    assert_eq!(
        first,
        LoadPlan::Restore {
            path: PathBuf::from("ofa_large.safetensors"),
            reset_optimizer: true,
            reset_dataloader: true,
            reset_meters: true
        }
    );
    assert!(first.describe().contains("reset: optimizer, dataloader, meters"));
    // Relaunch after a save: resume, reset flags ignored.
    let again = plan_load(&a, |_| true).unwrap();
    assert_eq!(again, LoadPlan::Resume { path: PathBuf::from("run").join(LAST) });
    assert!(again.describe().starts_with("resuming from run/checkpoint_last.safetensors"));
    // No --restore-file (the default name) and nothing saved yet: fresh start.
    assert_eq!(plan_load(&args(&[]), |_| false).unwrap(), LoadPlan::Fresh);
    // A --restore-file that does not exist is an error, not a silent fresh start.
    let err = plan_load(&a, |_| false).unwrap_err().to_string();
    assert!(err.contains("ofa_large.safetensors does not exist"), "{err}");
}

#[test]
fn reset_flags_drop_optimizer_position_and_meters_only_when_restoring() {
    let loaded = || CheckpointState {
        model: vec![("w".into(), Tensor::from(1.0f32))],
        optimizer: Some(elfin_trainer::optim::AdamState { step: 9, moments: Default::default() }),
        loss_scaler: None,
        progress: Progress {
            epoch: 2,
            num_updates: 900,
            iterations_in_epoch: 40,
            end_of_epoch: false,
            best: Some(0.9),
            metric: Some(0.8),
            previous_training_time: 10.0,
        },
        rng: RngState::default(),
        config: serde_json::Value::Null,
    };
    let restore =
        LoadPlan::Restore { path: "x".into(), reset_optimizer: true, reset_dataloader: true, reset_meters: true };
    let s = restore.apply(loaded());
    assert!(s.optimizer.is_none());
    assert_eq!(s.progress, Progress { epoch: 1, ..Progress::default() });
    assert_eq!(s.progress.resume_position(), (1, 0));
    let keep =
        LoadPlan::Restore { path: "x".into(), reset_optimizer: false, reset_dataloader: false, reset_meters: false };
    assert_eq!(keep.apply(loaded()).progress.num_updates, 900);
    let resumed = LoadPlan::Resume { path: "x".into() }.apply(loaded());
    assert_eq!((resumed.progress.num_updates, resumed.progress.best), (900, Some(0.9)));
    assert_eq!(resumed.progress.resume_position(), (2, 40));
}

#[test]
fn save_points_and_names_follow_the_reference_flags() {
    let a = args(&[
        "--save-interval-updates",
        "500",
        "--no-epoch-checkpoints",
        "--keep-best-checkpoints",
        "1",
        "--best-checkpoint-metric",
        "score",
        "--maximize-best-checkpoint-metric",
    ]);
    assert!(!should_save(&a, 1, 499, false));
    assert!(should_save(&a, 1, 500, false));
    assert!(should_save(&a, 1, 943, true));
    assert!(!should_save(&a, 1, 0, false));

    let p = plan_save(&a, 1, 500, false, Some(0.8512), None, &[]);
    assert_eq!(
        p.names,
        [
            "checkpoint_last.safetensors",
            "checkpoint_1_500.safetensors",
            "checkpoint_best.safetensors",
            "checkpoint.best_score_0.8512.safetensors"
        ]
    );
    assert_eq!((p.best, p.remove.len()), (Some(0.8512), 0));
    // A tie overwrites checkpoint_best; a worse value writes neither best file.
    let kept = ["checkpoint.best_score_0.8512.safetensors".to_string()];
    let tie = plan_save(&a, 1, 1000, false, Some(0.8512), Some(0.8512), &kept);
    assert!(tie.names.contains(&"checkpoint_best.safetensors".to_string()));
    let worse = plan_save(&a, 1, 1000, false, Some(0.85), Some(0.8512), &kept);
    assert_eq!(worse.names, ["checkpoint_last.safetensors", "checkpoint_1_1000.safetensors"]);
    assert_eq!(worse.best, Some(0.8512));
    let better = plan_save(&a, 2, 1886, true, Some(0.9), Some(0.8512), &kept);
    assert_eq!(better.remove, kept);
    // Keeping two: the new value enters in order and the worst ones go.
    let two = args(&[
        "--keep-best-checkpoints",
        "2",
        "--best-checkpoint-metric",
        "score",
        "--maximize-best-checkpoint-metric",
    ]);
    let name = |v: &str| format!("checkpoint.best_score_{v}.safetensors");
    let kept = [name("0.8000"), name("0.9000"), name("0.8500"), "checkpoint.best_cider_0.1000.safetensors".to_string()];
    let p = plan_save(&two, 1, 10, false, Some(0.85), Some(0.9), &kept);
    assert!(p.names.contains(&name("0.8500")));
    assert_eq!(p.remove, [name("0.8000")]);
    let p = plan_save(&two, 1, 10, false, Some(0.7), Some(0.9), &kept[..2]);
    assert!(p.remove.is_empty() && p.names.len() == 1);
    // Epoch checkpoints without --no-epoch-checkpoints; lower is better by default.
    let b = args(&[]);
    let p = plan_save(&b, 3, 10, true, Some(2.0), Some(1.5), &[]);
    assert_eq!(p.names, ["checkpoint_last.safetensors", "checkpoint3.safetensors"]);
}

const STOP_CHILD: &str = "ELFIN_SIGNAL_CHILD";

/// A fake training loop: updates until asked to stop, then saves
/// checkpoint_last and exits as the real loop does. With `slow`, saving
/// hangs, so a second signal is needed.
fn stop_child(dir: &Path, slow: bool) {
    signals::install().unwrap();
    println!("ready");
    let mut num_updates = 0u64;
    // Never outlive a parent that failed before sending its signal.
    let give_up = Instant::now() + Duration::from_secs(60);
    while Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(5));
        num_updates += 1;
        if signals::stop_requested() {
            println!("saving after {num_updates} updates (signal {:?})", signals::received_signal());
            if slow {
                std::thread::sleep(Duration::from_secs(60));
            }
            let state = CheckpointState {
                model: vec![("w".into(), Tensor::from(num_updates as f32))],
                optimizer: None,
                loss_scaler: None,
                progress: Progress { epoch: 1, num_updates, ..Progress::default() },
                rng: RngState::default(),
                config: serde_json::Value::Null,
            };
            save_checkpoint(&dir.join(LAST), &state).unwrap();
            println!("saved");
            std::process::exit(EXIT_PREEMPTED);
        }
    }
    std::process::exit(3);
}

fn spawn_child(
    test: &str,
    dir: &Path,
    slow: bool,
) -> (std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(STOP_CHILD, dir)
        .env("ELFIN_SIGNAL_SLOW", if slow { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // libtest prints "test NAME ... " without a newline before the test's own output.
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.ends_with("ready")), "child did not start");
    (child, lines)
}

fn send(child: &std::process::Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

#[test]
fn sigterm_finishes_the_update_saves_and_exits_preempted() {
    if let Some(dir) = std::env::var_os(STOP_CHILD) {
        return stop_child(Path::new(&dir), std::env::var("ELFIN_SIGNAL_SLOW").as_deref() == Ok("1"));
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_child("sigterm_finishes_the_update_saves_and_exits_preempted", dir.path(), false);
    std::thread::sleep(Duration::from_millis(50));
    send(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    let out: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(status.code(), Some(EXIT_PREEMPTED), "{out:?}");
    assert!(out.iter().any(|l| l.contains(&format!("(signal Some({}))", libc::SIGTERM))), "{out:?}");
    assert!(out.iter().any(|l| l.ends_with("saved")), "{out:?}");
    let state = load_checkpoint(&dir.path().join(LAST)).unwrap();
    assert!(state.progress.num_updates > 0);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("saving checkpoint_last"), "{stderr}");
}

#[test]
fn repeated_stop_signals_are_ignored_and_the_third_interrupt_exits_at_once() {
    if let Some(dir) = std::env::var_os(STOP_CHILD) {
        return stop_child(Path::new(&dir), std::env::var("ELFIN_SIGNAL_SLOW").as_deref() == Ok("1"));
    }
    let dir = tempfile::tempdir().unwrap();
    let test = "repeated_stop_signals_are_ignored_and_the_third_interrupt_exits_at_once";
    let (mut child, mut lines) = spawn_child(test, dir.path(), true);
    send(&child, libc::SIGTERM);
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("saving after")));
    // What a scheduler, mpirun and a launcher may all send while the ranks save.
    for signal in [libc::SIGTERM, libc::SIGUSR1, libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
        send(&child, signal);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "a repeated stop signal must not interrupt the save");
    send(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(50));
    send(&child, libc::SIGINT);
    let sent = Instant::now();
    let status = child.wait().unwrap();
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "the third Ctrl-C exits at once");
    assert!(!dir.path().join(LAST).exists());
}
