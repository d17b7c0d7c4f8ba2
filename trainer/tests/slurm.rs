//! Slurm for real: each test starts its own one-node cluster
//! (scripts/local-slurm.sh: munged, slurmctld and slurmd from Debian's
//! packages) and submits `elfin launch` of the tiny demo caption recipe on 2
//! tasks with `sbatch`, as docs/slurm.md says. A run there must write the same
//! checkpoint as `elfin launch --cpu --nproc-per-node 2`; a stop (scancel
//! --signal=TERM, a time limit with --signal=TERM@N) must save
//! checkpoint_last, exit 75 as Slurm records it, and resume (requeued, or a
//! new sbatch) to the same end as a run never stopped. Slurm that cannot
//! start fails these tests: CI runs as root after scripts/setup.sh.

mod train_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use train_common::*;

const MAX_UPDATE: u64 = 30;

/// Each job takes both cores: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn repo_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/local-slurm.sh")
}

/// A running local Slurm, stopped when dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    fn up(dir: &Path) -> Cluster {
        let out = Command::new("bash").arg(repo_script()).arg("up").arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "scripts/local-slurm.sh up could not start Slurm (run as root after scripts/setup.sh):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster { dir: dir.to_path_buf(), conf: dir.join("slurm.conf") }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        cmd
    }

    /// Runs a Slurm client command; its stdout.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Submits `script` from `dir`; the job id.
    fn sbatch(&self, dir: &Path, script: &Path) -> String {
        let out = self
            .command("sbatch")
            .arg("--parsable")
            .arg(script)
            .current_dir(dir)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "sbatch failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap().to_string()
    }

    /// `JobState` and `ExitCode` (`status:signal`) of a job, from scontrol.
    fn job(&self, id: &str) -> (String, String) {
        let text = self.run("scontrol", &["show", "job", "-o", id]);
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in: {text}"))
                .to_string()
        };
        (field("JobState"), field("ExitCode"))
    }

    /// Waits until the job has ended (not pending, running or completing).
    fn wait_end(&self, id: &str, limit: Duration, dir: &Path) -> (String, String) {
        let start = Instant::now();
        loop {
            let (state, code) = self.job(id);
            if !matches!(
                state.as_str(),
                "PENDING" | "RUNNING" | "COMPLETING" | "CONFIGURING" | "REQUEUED" | "SIGNALING" | "STAGE_OUT"
            ) {
                return (state, code);
            }
            assert!(start.elapsed() < limit, "job {id} still {state} after {limit:?}; its output:\n{}", output(dir));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo_script()).arg("down").arg(&self.dir).output();
    }
}

struct Setup {
    root: PathBuf,
    preset: PathBuf,
    reference: PathBuf,
}

/// The data, the preset, and the run under `elfin launch --cpu --nproc-per-node 2`.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let root = train_common::process_dir();
        let data = synth_caption(&root);
        let preset = tiny_caption_preset(&root, &data, MAX_UPDATE);
        let reference = root.join("reference");
        std::fs::create_dir(&reference).unwrap();
        let out = Command::new(launcher())
            .args(["launch", "--preset"])
            .arg(&preset)
            .args(["--cpu", "--nproc-per-node", "2"])
            .current_dir(&reference)
            .env("OMP_NUM_THREADS", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "the uninterrupted run failed: {}", String::from_utf8_lossy(&out.stderr));
        Setup { root, preset, reference: reference.join("run") }
    })
}

/// A test's folder with its cluster, and a job script in it as docs/slurm.md
/// writes them: 2 tasks, requeue, the output appended to job.out.
fn job_dir(name: &str, sbatch_options: &[&str], launch_options: &str) -> (PathBuf, Cluster, PathBuf) {
    let dir = setup().root.join(name);
    std::fs::create_dir(&dir).unwrap();
    let cluster = Cluster::up(&dir.join("slurm"));
    let options: String = sbatch_options.iter().map(|o| format!("#SBATCH {o}\n")).collect();
    let script = dir.join("job.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n#SBATCH --ntasks=2\n#SBATCH --requeue\n#SBATCH --open-mode=append\n#SBATCH --output=job.out\n\
             {options}exec {} launch --preset {} --cpu {launch_options}\n",
            launcher().display(),
            setup().preset.display()
        ),
    )
    .unwrap();
    (dir, cluster, script)
}

fn output(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("job.out")).unwrap_or_default()
}

fn wait_for_update(run: &Path, update: u64, dir: &Path) {
    let start = Instant::now();
    while logged_updates(run) < update {
        assert!(start.elapsed() < Duration::from_secs(180), "no update {update}; job output:\n{}", output(dir));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A job stopped by a signal: exit 75 as Slurm records it, a checkpoint_last
/// from before the last update (`max_update`).
fn assert_stopped(cluster: &Cluster, id: &str, dir: &Path, max_update: u64) {
    let (state, code) = cluster.wait_end(id, Duration::from_secs(120), dir);
    let text = output(dir);
    assert_eq!(code, "75:0", "job {id} ended {state}, not with the preemption status 75:\n{text}");
    assert!(text.contains("stopped by SIGTERM"), "{text}");
    let last = dir.join("run/checkpoint_last.safetensors");
    assert!(!all_tensors(&last).is_empty(), "{} is empty", last.display());
    assert!(logged_updates(&dir.join("run")) < max_update, "the run ended before the stop:\n{text}");
}

fn assert_same_as_reference(dir: &Path) {
    assert_same_checkpoint(
        &setup().reference.join("checkpoint_last.safetensors"),
        &dir.join("run/checkpoint_last.safetensors"),
    );
}

#[test]
fn sbatch_on_two_tasks_writes_the_checkpoint_of_elfin_launch_on_two_ranks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, cluster, script) = job_dir("plain", &[], "");
    let id = cluster.sbatch(&dir, &script);
    let (state, code) = cluster.wait_end(&id, Duration::from_secs(300), &dir);
    let text = output(&dir);
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{text}");
    assert!(text.contains("srun --mpi=pmix") && text.contains("PMIX_RANK=1"), "the ranks are srun's tasks:\n{text}");
    assert!(text.contains("rank 0 of 2"), "{text}");
    assert_same_as_reference(&dir);
}

#[test]
fn scancel_term_saves_exits_75_and_the_requeued_job_ends_as_if_never_stopped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, cluster, script) = job_dir("scancel", &[], "");
    let id = cluster.sbatch(&dir, &script);
    wait_for_update(&dir.join("run"), 12, &dir);
    cluster.run("scancel", &["--signal=TERM", &id]);
    assert_stopped(&cluster, &id, &dir, MAX_UPDATE);
    cluster.run("scontrol", &["requeue", &id]);
    // Slurm holds a requeued job back for two minutes. The test need not wait
    // that long, but a job started again within the second of its requeue
    // has its steps refused (its old credential was revoked then).
    std::thread::sleep(Duration::from_secs(3));
    cluster.run("scontrol", &["update", &format!("JobId={id}"), "StartTime=now"]);
    let (state, code) = cluster.wait_end(&id, Duration::from_secs(300), &dir);
    let text = output(&dir);
    assert_eq!((state.as_str(), code.as_str()), ("COMPLETED", "0:0"), "{text}");
    assert!(text.contains("resuming from ./run/checkpoint_last.safetensors"), "{text}");
    assert_same_as_reference(&dir);
}

#[test]
fn a_time_limit_with_signal_term_saves_exits_75_and_a_new_sbatch_resumes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Slurm sends the --signal up to one check period (30 s) early: TERM@75
    // of a 2 minute limit comes between 15 s and 45 s into the job. The run
    // is made longer than any machine gets through in that time (400
    // updates once finished first on an idle machine); comparing its end
    // with an uninterrupted run is the requeue test's part.
    let long = 1_000_000;
    let options = format!("--set max_update={long} --set max_epoch={long}");
    let (dir, cluster, script) = job_dir("time-limit", &["--time=2", "--signal=TERM@75"], &options);
    let id = cluster.sbatch(&dir, &script);
    assert_stopped(&cluster, &id, &dir, long);
    let saved = logged_updates(&dir.join("run"));
    let resumed = dir.join("resume.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    std::fs::write(&resumed, text.replace("#SBATCH --time=2\n", "")).unwrap();
    let id = cluster.sbatch(&dir, &resumed);
    wait_for_update(&dir.join("run"), saved + 2, &dir);
    assert!(output(&dir).contains("resuming from ./run/checkpoint_last.safetensors"), "{}", output(&dir));
    cluster.run("scancel", &["--signal=TERM", &id]);
    assert_stopped(&cluster, &id, &dir, long);
}

#[test]
fn usr1_to_the_whole_job_stops_it_as_term_to_its_steps_does() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // srun answers SIGTERM by killing its step, but passes SIGUSR1 on to the
    // tasks: with `exec elfin launch` the batch step is srun itself.
    let (dir, cluster, script) = job_dir("usr1-full", &[], "");
    let id = cluster.sbatch(&dir, &script);
    wait_for_update(&dir.join("run"), 3, &dir);
    cluster.run("scancel", &["--signal=USR1", "--full", &id]);
    let (state, code) = cluster.wait_end(&id, Duration::from_secs(120), &dir);
    let text = output(&dir);
    assert_eq!(code, "75:0", "job {id} ended {state}, not with the preemption status 75:\n{text}");
    assert!(text.contains("stopped by SIGUSR1"), "{text}");
    assert!(!all_tensors(&dir.join("run/checkpoint_last.safetensors")).is_empty());
}

/// The elfin-train process of task `task` of Slurm job `id`, once it runs.
fn trainer_of_task(id: &str, task: u32) -> Option<i32> {
    let wanted = [format!("SLURM_JOB_ID={id}"), format!("SLURM_PROCID={task}")];
    std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).find(|p| {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        let is_trainer = cmd.split(|&b| b == 0).next().is_some_and(|a| a.ends_with(b"elfin-train"));
        is_trainer && wanted.iter().all(|w| env.split(|&b| b == 0).any(|v| v == w.as_bytes()))
    })
}

#[test]
fn a_task_that_dies_ends_the_step_naming_task_node_and_status() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, cluster, script) = job_dir("task-dies", &[], "");
    let id = cluster.sbatch(&dir, &script);
    wait_for_update(&dir.join("run"), 3, &dir);
    let victim = trainer_of_task(&id, 1).expect("task 1's elfin-train is running");
    // SAFETY: signals a process of this test's job.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let killed = Instant::now();
    // srun ends the step at once: SIGTERM to the other task, which cannot
    // save without its peer, then SIGKILL after KillWait (30 s).
    let (state, code) = cluster.wait_end(&id, Duration::from_secs(90), &dir);
    assert!(killed.elapsed() < Duration::from_secs(90));
    let text = output(&dir);
    let node = cluster.run("hostname", &["-s"]);
    let named = format!("srun: error: {}: task 1: Killed", node.trim());
    assert!(text.contains(&named), "expected `{named}` in the job output:\n{text}");
    assert_eq!(state, "FAILED", "exit {code}:\n{text}");
    assert_ne!(code, "0:0", "{text}");
}
