//! `elfin` end to end: listing and showing presets, dry-run plans (GPUs,
//! hostfile, CPU, inside an MPI job), and real mpirun jobs of a fake trainer
//! (success with per-rank logs, a failing rank, Ctrl-C).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Stands in for `elfin-train`: `synth` makes the demo data; `train
/// --check-only` passes unless $FAIL_CHECK; `train` prints what it got, fails
/// on rank $FAIL_RANK, records its pid and sleeps $SLEEP. Like elfin-train it
/// unblocks the stop signals once it handles them, and a stop request makes
/// it exit 75 ("saved") after $SAVE_SECONDS.
const FAKE_TRAINER: &str = r#"#!/usr/bin/env python3
import os, signal, sys, time
args = sys.argv[1:]
if args[0] == "synth":
    out = args[4]
    os.makedirs(out + "/bpe", exist_ok=True)
    for f in ("train.tsv", "val.tsv"):
        open(out + "/" + f, "w").close()
    print("synth made " + out, flush=True)
    sys.exit(0)
if any(a.startswith("--check-only") for a in args):
    if os.environ.get("FAIL_CHECK"):
        print("elfin-train: error: --lr abc: invalid float literal", file=sys.stderr)
        sys.exit(2)
    print("check: fake ok " + " ".join(args), flush=True)
    sys.exit(0)
rank = os.environ.get("OMPI_COMM_WORLD_RANK")
stops = []
def stop(sig, frame):
    stops.append(sig)
    with open(os.environ.get("STOP_LOG", "/dev/null"), "a") as f:
        f.write("rank %s got %d\n" % (rank, sig))
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(sig, stop)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1})
print("rank=%s pid=%d port=%s threads=%s args=%s" % (
    rank, os.getpid(), os.environ.get("MASTER_PORT"), os.environ.get("OMP_NUM_THREADS"), " ".join(args)), flush=True)
print("stderr of rank %s" % rank, file=sys.stderr, flush=True)
if rank == os.environ.get("FAIL_RANK"):
    sys.exit(3)
if os.environ.get("PID_DIR"):
    with open("%s/rank-%s.pid" % (os.environ["PID_DIR"], rank), "w") as f:
        f.write(str(os.getpid()))
end = time.time() + float(os.environ.get("SLEEP", "0"))
while time.time() < end and not stops:
    time.sleep(0.05)
if stops:
    time.sleep(float(os.environ.get("SAVE_SECONDS", "0")))
    sys.exit(75)
"#;

/// Stands in for mpirun on fake hosts: records its arguments in $MPIRUN_LOG
/// and runs the program after the options once per rank, here.
const FAKE_MPIRUN: &str = r#"#!/bin/sh
echo "$@" >> "$MPIRUN_LOG"
np=1
while [ $# -gt 0 ]; do
  case "$1" in
    -np) np=$2; shift 2;;
    --host|-x|--map-by|--bind-to) shift 2;;
    -*) shift;;
    *) break;;
  esac
done
i=0; while [ $i -lt $np ]; do OMPI_COMM_WORLD_RANK=$i "$@" || exit $?; i=$((i+1)); done
"#;

/// `nvidia-smi -L` for a node with $FAKE_GPUS GPUs (none: it fails).
const FAKE_NVIDIA_SMI: &str = r#"#!/bin/sh
n=${FAKE_GPUS:-0}
[ "$n" -gt 0 ] || exit 9
i=0; while [ $i -lt $n ]; do echo "GPU $i: Fake (UUID: GPU-$i)"; i=$((i+1)); done
"#;

struct Sandbox {
    dir: tempfile::TempDir,
}

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        write_exe(&dir.path().join("bin/nvidia-smi"), FAKE_NVIDIA_SMI);
        write_exe(&dir.path().join("fake-train"), FAKE_TRAINER);
        Sandbox { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `elfin` in the sandbox, with none of the caller's MPI, GPU or elfin settings.
    fn elfin(&self, gpus: usize) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_elfin"));
        for (key, _) in std::env::vars() {
            let ours = ["OMPI_", "PMI", "SLURM_", "ELFIN_", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"];
            if ours.iter().any(|p| key.starts_with(p)) {
                cmd.env_remove(key);
            }
        }
        let path = format!("{}:{}", self.path("bin").display(), std::env::var("PATH").unwrap_or_default());
        cmd.current_dir(self.dir.path())
            .env("PATH", path)
            .env("FAKE_GPUS", gpus.to_string())
            .env("ELFIN_TRAIN_BIN", self.path("fake-train"))
            .env("ELFIN_DATA_ROOT", self.path("data"));
        cmd
    }
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stdout, stderr)
}

fn ok(cmd: &mut Command) -> String {
    let (out, stdout, stderr) = run(cmd);
    assert!(out.status.success(), "{cmd:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"))
}

#[test]
fn presets_lists_builtin_and_own_presets_and_show_prints_variables_then_the_command() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path("mine")).unwrap();
    std::fs::write(
        sb.path("mine/tiny_caption.sh"),
        "# my own: the demo with more updates\nsource demo_caption_el.sh\nmax_update=300\n",
    )
    .unwrap();
    let listing = ok(sb.elfin(0).args(["presets", "--preset-dir", "mine"]));
    for (name, task) in [
        ("caption_stage1_el", "caption"),
        ("caption_stage1_el_db", "caption"),
        ("refcoco_el", "refcoco"),
        ("refcocoplus_el", "refcoco"),
        ("refcocog_el", "refcoco"),
        ("demo_caption_el", "caption"),
        ("demo_refcoco_el", "refcoco"),
        ("tiny_caption", "caption"),
    ] {
        let row = line(&listing, &format!("{name} "));
        assert_eq!(row.split_whitespace().nth(1), Some(task), "{row}");
    }
    assert!(
        line(&listing, "tiny_caption ").contains("my own")
            && line(&listing, "tiny_caption ").contains("mine/tiny_caption.sh")
    );
    assert!(!listing.contains("_ofa_el_common"), "pieces for `source` are not presets");

    // ELFIN_PRESET_PATH finds it too; show prints NAME=value lines, then the command.
    let shown = ok(sb.elfin(0).env("ELFIN_PRESET_PATH", sb.path("mine")).args([
        "presets",
        "show",
        "tiny_caption",
        "--set",
        "lr=2e-4",
    ]));
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines[0], format!("DATA_ROOT={}", sb.path("data").display()));
    assert!(lines.contains(&"max_update=300") && lines.contains(&"lr=2e-4") && lines.contains(&"arch=ofa_micro"));
    assert!(lines.contains(&r#"eval_args={"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}"#), "values unquoted");
    let command = lines.last().unwrap();
    assert!(command.starts_with(&format!("{} train ", sb.path("fake-train").display())), "{command}");
    for arg in ["--lr=2e-4", "--max-update=300", "--arch=ofa_micro", "--device=cpu", r#"'--eval-args={"beam":5,"#] {
        assert!(command.contains(arg), "{arg} in {command}");
    }
    assert!(lines[..lines.len() - 1].iter().all(|l| l.contains('=') || l.starts_with("# ")));
    let unused = line(&shown, "# reach nothing");
    assert!(unused.contains(" save_dir") && !unused.contains(" save_path"), "{unused}");

    let (out, _, stderr) = run(sb.elfin(0).args(["presets", "show", "refcoco_el", "--set", "max_updat=1"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`max_updat` is neither") && stderr.contains("did you mean max_update?"), "{stderr}");
    let (out, _, stderr) = run(sb.elfin(0).args(["presets", "show", "no_such_preset"]));
    assert!(!out.status.success() && stderr.contains("known presets: caption_stage1_el"), "{stderr}");
}

#[test]
fn a_preset_that_runs_commands_is_refused_with_file_and_line() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("evil.sh"), "# looks harmless\nlr=1\ntouch pwned\n").unwrap();
    let (out, _, stderr) = run(sb.elfin(0).args(["launch", "--preset", "./evil.sh", "--dry-run"]));
    assert!(!out.status.success());
    assert!(stderr.contains("./evil.sh:3: `touch` is a command") && stderr.contains("never runs them"), "{stderr}");
    assert!(!sb.path("pwned").exists());
}

#[test]
fn dry_run_on_one_node_with_four_gpus() {
    let sb = Sandbox::new();
    let stdout = ok(sb.elfin(4).args(["launch", "--preset", "caption_stage1_el", "--dry-run", "--log-dir", "L"]));
    assert_eq!(line(&stdout, "device:"), "device:  4 GPU(s) per node, from CUDA_VISIBLE_DEVICES=0,1,2,3");
    assert!(line(&stdout, "ranks:").starts_with("ranks:   4 in all, up to 4 per node"));
    let command = line(&stdout, "command:");
    for part in [
        "MASTER_PORT=1051 CUDA_VISIBLE_DEVICES=0,1,2,3 OMP_NUM_THREADS=",
        " mpirun ",
        " -np 4 ",
        " --map-by slot --bind-to none ",
        " -x MASTER_PORT -x CUDA_VISIBLE_DEVICES -x OMP_NUM_THREADS ",
        &format!(" rank --log-dir {} -- {} train ", sb.path("L").display(), sb.path("fake-train").display()),
        " --data=",
        "/caption_data/caption_stage1_train.tsv,",
        " --device=cuda",
    ] {
        assert!(command.contains(part), "`{part}` in {command}");
    }
    assert!(!command.contains("--host"));
    assert!(!sb.path("L").exists(), "a dry run makes nothing");

    // Without CUDA_VISIBLE_DEVICES the GPUs nvidia-smi lists count.
    std::fs::write(sb.path("plain.sh"), "# no GPUs named\ntask=caption\n").unwrap();
    let stdout = ok(sb.elfin(4).args(["launch", "--preset", "plain.sh", "--dry-run"]));
    assert_eq!(line(&stdout, "device:"), "device:  4 GPU(s) per node, from nvidia-smi -L");
    assert!(line(&stdout, "command:").contains(" -np 4 "));
    let stdout = ok(sb.elfin(4).args(["launch", "--preset", "plain.sh", "--dry-run", "--nproc-per-node", "2"]));
    assert!(line(&stdout, "command:").contains(" -np 2 "));

    // The reference's GPUs 4-7 do not exist on a 4-GPU node: say what to do.
    let (out, _, stderr) = run(sb.elfin(4).args(["launch", "--preset", "refcocog_el", "--dry-run"]));
    assert!(!out.status.success() && stderr.contains("--set CUDA_VISIBLE_DEVICES="), "{stderr}");
    let stdout =
        ok(sb.elfin(4).args(["launch", "--preset", "refcocog_el", "--dry-run", "--set", "CUDA_VISIBLE_DEVICES=0,1"]));
    assert!(line(&stdout, "command:").contains(" -np 2 "));
}

#[test]
fn dry_run_on_two_nodes_from_a_hostfile() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("hosts"), "# two GPU nodes\nnode-a slots=4\nnode-b slots=4 max_slots=8\n").unwrap();
    // The trainer's check runs once on each host, through mpirun (here a stand-in: the hosts are made up).
    std::fs::create_dir(sb.path("fake-mpi")).unwrap();
    write_exe(&sb.path("fake-mpi/mpirun"), FAKE_MPIRUN);
    let with_fake_mpirun = |cmd: &mut Command| {
        let path = format!("{}:{}", sb.path("fake-mpi").display(), std::env::var("PATH").unwrap());
        cmd.env("PATH", path).env("MPIRUN_LOG", sb.path("mpirun.log"));
    };
    let mut cmd = sb.elfin(0);
    with_fake_mpirun(&mut cmd);
    let stdout = ok(cmd.args(["launch", "--preset", "refcoco_el", "--hostfile", "hosts", "--dry-run"]));
    assert_eq!(line(&stdout, "check:"), "check:   ok on 2 host(s): flags, BPE, data and checkpoint paths");
    let mpirun_log = std::fs::read_to_string(sb.path("mpirun.log")).unwrap();
    assert!(
        mpirun_log.contains("-np 2 --host node-a:1,node-b:1 ") && mpirun_log.contains(" --check-only=all"),
        "{mpirun_log}"
    );
    assert_eq!(line(&stdout, "nodes:"), "nodes:   2 from hosts: node-a (4 ranks), node-b (4 ranks)");
    assert!(line(&stdout, "ranks:").starts_with("ranks:   8 in all, up to 4 per node"));
    let command = line(&stdout, "command:");
    for part in [" -np 8 --host node-a:4,node-b:4 ", " -x PATH ", "--device=cuda", "--eval-acc", "MASTER_PORT=6051"] {
        assert!(command.contains(part), "`{part}` in {command}");
    }
    let mut cmd = sb.elfin(0);
    with_fake_mpirun(&mut cmd);
    let stdout =
        ok(cmd.args(["launch", "--preset", "refcoco_el", "--hostfile", "hosts", "--nproc-per-node", "2", "--dry-run"]));
    assert!(line(&stdout, "command:").contains(" -np 4 --host node-a:2,node-b:2 "));
}

#[test]
fn dry_run_on_the_cpu() {
    let sb = Sandbox::new();
    let cpus = std::thread::available_parallelism().unwrap().get();
    let stdout = ok(sb.elfin(8).args([
        "launch",
        "--preset",
        "caption_stage1_el",
        "--cpu",
        "--nproc-per-node",
        "1",
        "--dry-run",
    ]));
    assert_eq!(line(&stdout, "device:"), "device:  CPU (--cpu)");
    let command = line(&stdout, "command:");
    assert!(
        command.contains(&format!("OMP_NUM_THREADS={cpus} "))
            && command.contains(&format!("--map-by slot:PE={cpus} --bind-to hwthread")),
        "{command}"
    );
    assert!(command.ends_with("--device=cpu") && !command.contains("--oversubscribe"), "{command}");

    // The demo hides the GPUs itself; more ranks than CPUs oversubscribe.
    let many = (cpus + 1).to_string();
    let stdout =
        ok(sb.elfin(8).args(["launch", "--preset", "demo_refcoco_el", "--nproc-per-node", &many, "--dry-run"]));
    assert_eq!(line(&stdout, "device:"), "device:  CPU (no GPU visible)");
    let command = line(&stdout, "command:");
    assert!(
        command.contains(" --bind-to none --oversubscribe ") && command.contains("OMP_NUM_THREADS=1 "),
        "{command}"
    );
    let synth = line(&stdout, "first:");
    assert_eq!(
        synth,
        format!(
            "first:   {} synth --task refcoco --out {}",
            sb.path("fake-train").display(),
            sb.path("data/synth/refcoco").display()
        )
    );
}

#[test]
fn inside_an_mpi_job_launch_becomes_the_trainer() {
    let sb = Sandbox::new();
    let stdout = ok(sb.elfin(0).env("OMPI_COMM_WORLD_RANK", "1").args([
        "launch",
        "--preset",
        "refcoco_el",
        "--cpu",
        "--dry-run",
    ]));
    assert!(line(&stdout, "mpi:").contains("OMPI_COMM_WORLD_RANK=1"));
    let exec = line(&stdout, "exec:");
    assert!(
        exec.starts_with(&format!(
            "exec:    MASTER_PORT=6051 CUDA_VISIBLE_DEVICES=0,1,2,3 {} train ",
            sb.path("fake-train").display()
        )),
        "{exec}"
    );
    assert!(exec.ends_with("--device=cpu") && !stdout.contains("mpirun"), "{stdout}");

    // For real: the same process (same pid) turns into the trainer, with the preset's exports.
    for (var, extra) in [("PMI_RANK", None), ("SLURM_PROCID", Some(("SLURM_STEP_ID", "0")))] {
        let mut cmd = sb.elfin(0);
        cmd.env(var, "0")
            .args(["launch", "--preset", "refcoco_el", "--set", "max_update=7"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some((k, v)) = extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let trainer = line(&stdout, "rank=");
        assert!(trainer.contains(&format!("pid={pid} port=6051 ")), "{var}: {trainer}");
        assert!(trainer.contains("--max-update=7") && trainer.contains("--device=cuda"), "{trainer}");
    }
}

#[test]
fn in_a_slurm_allocation_launch_runs_one_srun_step_of_itself() {
    let sb = Sandbox::new();
    let allocation = [("SLURM_JOB_ID", "7"), ("SLURM_NTASKS", "2"), ("SLURM_JOB_NODELIST", "n[1-2]")];
    let stdout = ok(sb.elfin(0).envs(allocation).args(["launch", "--preset", "demo_refcoco_el", "--dry-run"]));
    assert_eq!(
        line(&stdout, "slurm:"),
        "slurm:   job 7: 2 task(s) on n[1-2], each one rank (ranks, nodes and local ranks from Slurm)"
    );
    let elfin = Path::new(env!("CARGO_BIN_EXE_elfin")).display().to_string();
    assert_eq!(
        line(&stdout, "command:"),
        format!("command: srun --mpi=pmix --kill-on-bad-exit=1 {elfin} launch --preset demo_refcoco_el --dry-run")
    );
    assert!(line(&stdout, "first:").contains(" synth --task refcoco "), "{stdout}");
    assert!(!stdout.contains("mpirun"), "{stdout}");

    // A task of a step srun started without PMIx would train alone.
    let (out, _, stderr) = run(sb
        .elfin(0)
        .envs([("SLURM_PROCID", "1"), ("SLURM_STEP_ID", "0"), ("SLURM_NTASKS", "2")])
        .args(["launch", "--preset", "refcoco_el", "--dry-run"]));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("without PMIx") && stderr.contains("srun --mpi=pmix"), "{stderr}");
}

/// Waits for `path` to exist (the fake trainer writes it once it runs).
fn wait_for(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_cpu_ranks_run_with_one_log_each_and_rank_0_on_the_console() {
    let sb = Sandbox::new();
    let (out, stdout, stderr) =
        run(sb.elfin(0).args(["launch", "--preset", "demo_caption_el", "--nproc-per-node", "2", "--log-dir", "logs"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        sb.path("data/synth/caption/train.tsv").exists() && stdout.contains("synth made"),
        "the demo makes its data first"
    );
    assert!(stdout.contains("rank=0 ") && !stdout.contains("rank=1 "), "{stdout}");
    assert!(stderr.contains("stderr of rank 0") && !stderr.contains("stderr of rank 1"), "{stderr}");
    assert!(stderr.contains("all 2 ranks finished"), "{stderr}");
    for rank in 0..2 {
        let log = std::fs::read_to_string(sb.path(&format!("logs/rank-{rank}-{}.log", hostname()))).unwrap();
        assert!(log.contains(&format!("rank={rank} ")) && log.contains(&format!("stderr of rank {rank}")), "{log}");
        assert!(log.contains("port=1051 threads=") && log.contains("--arch=ofa_micro"), "{log}");
    }
}

#[test]
fn a_failing_rank_gives_its_exit_code_and_names_its_log() {
    let sb = Sandbox::new();
    let (out, stdout, stderr) = run(sb.elfin(0).env("FAIL_RANK", "1").env("SLEEP", "30").args([
        "launch",
        "--preset",
        "demo_caption_el",
        "--nproc-per-node",
        "2",
        "--log-dir",
        "logs",
    ]));
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    let log = sb.path(&format!("logs/rank-1-{}.log", hostname()));
    let named = format!("rank 1 on {} exited with code 3; its log: {}", hostname(), log.display());
    assert!(stderr.contains(&named), "{stderr}");
    assert!(std::fs::read_to_string(log).unwrap().contains("stderr of rank 1"));
}

fn hostname() -> String {
    String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap().trim().to_string()
}

#[test]
fn max_restarts_relaunches_a_failing_job_and_records_each_restart() {
    let sb = Sandbox::new();
    let (out, _, stderr) = run(sb.elfin(0).env("FAIL_RANK", "1").args([
        "launch",
        "--preset",
        "demo_caption_el",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "2",
        "--restart-delay",
        "0",
    ]));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let cause = format!("rank 1 on {} exited with code 3", hostname());
    for k in 1..=2 {
        assert!(stderr.contains(&format!("elfin: restart {k} of 2 in 0 s, from ")), "{stderr}");
    }
    assert!(stderr.contains("no restarts left (--max-restarts 2)"), "{stderr}");
    let metrics = std::fs::read_to_string(sb.path("demo_checkpoints/caption_el/metrics.jsonl")).unwrap();
    let restarts: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "restart")
        .collect();
    assert_eq!(restarts.len(), 2, "{metrics}");
    for (k, r) in restarts.iter().enumerate() {
        assert_eq!(r["restart"], k as u64 + 1);
        assert_eq!((r["rank"].as_u64(), r["exit_code"].as_i64()), (Some(1), Some(3)), "{r}");
        assert!(r["cause"].as_str().unwrap().starts_with(&cause), "{r}");
    }
    let log = std::fs::read_to_string(sb.path(&format!("demo_logs/rank-1-{}.log", hostname()))).unwrap();
    assert_eq!(log.matches("stderr of rank 1").count(), 3, "a restarted rank appends to its log: {log}");
}

#[test]
fn a_refused_check_starts_no_rank_and_exits_2() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path("pids")).unwrap();
    for extra in [&["--dry-run"][..], &[]] {
        let (out, stdout, stderr) = run(sb
            .elfin(0)
            .env("FAIL_CHECK", "1")
            .env("PID_DIR", sb.path("pids"))
            .args([&["launch", "--preset", "demo_caption_el", "--nproc-per-node", "2"][..], extra].concat()));
        assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
        assert!(stderr.contains("refused its command line") && stderr.contains("invalid float literal"), "{stderr}");
    }
    assert!(std::fs::read_dir(sb.path("pids")).unwrap().next().is_none(), "no rank started");
}

/// A job of two fake ranks that take `save` seconds to save after a stop request.
fn start_job(sb: &Sandbox, save: &str) -> (std::process::Child, Vec<i32>) {
    std::fs::create_dir_all(sb.path("pids")).unwrap();
    let launcher = sb
        .elfin(0)
        .env("PID_DIR", sb.path("pids"))
        .env("STOP_LOG", sb.path("stops.log"))
        .env("SLEEP", "120")
        .env("SAVE_SECONDS", save)
        .args(["launch", "--preset", "demo_caption_el", "--nproc-per-node", "2", "--log-dir", "logs"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid_files = [sb.path("pids/rank-0.pid"), sb.path("pids/rank-1.pid")];
    for f in &pid_files {
        wait_for(f, Duration::from_secs(30));
    }
    // The wrappers report a rank ready within 10 ms of its handler being in place.
    std::thread::sleep(Duration::from_millis(300));
    (launcher, pid_files.iter().map(|f| std::fs::read_to_string(f).unwrap().trim().parse().unwrap()).collect())
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: signals a process this test started.
    unsafe { libc::kill(pid, sig) };
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn finish(mut launcher: std::process::Child, pids: &[i32], within: Duration) -> (Option<i32>, String) {
    let sent = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        assert!(sent.elapsed() < within, "ranks still running {within:?} after the stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = launcher.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(launcher.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn ctrl_c_stops_every_rank_once_and_the_job_exits_75() {
    let sb = Sandbox::new();
    let (launcher, pids) = start_job(&sb, "0");
    kill(launcher.id() as i32, libc::SIGINT);
    let (code, stderr) = finish(launcher, &pids, Duration::from_secs(10));
    assert_eq!(code, Some(75), "{stderr}");
    assert!(stderr.contains("stopped by SIGINT: every rank saved"), "{stderr}");
}

#[test]
fn repeated_stop_signals_to_every_process_do_not_interrupt_the_save() {
    let sb = Sandbox::new();
    let (launcher, pids) = start_job(&sb, "3");
    let mpirun = Command::new("pgrep").args(["-P", &launcher.id().to_string(), "mpirun"]).output().unwrap();
    let mpirun: i32 = String::from_utf8_lossy(&mpirun.stdout).trim().parse().expect("mpirun is the launcher's child");
    // As a scheduler does: every process of the job, then the launcher again while the ranks save.
    for &pid in [launcher.id() as i32, mpirun].iter().chain(&pids) {
        kill(pid, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        kill(launcher.id() as i32, libc::SIGTERM);
        kill(mpirun, libc::SIGTERM);
    }
    let (code, stderr) = finish(launcher, &pids, Duration::from_secs(20));
    assert_eq!(code, Some(75), "{stderr}");
    let stops = std::fs::read_to_string(sb.path("stops.log")).unwrap();
    for rank in 0..2 {
        assert!(stops.contains(&format!("rank {rank} got")), "{stops}");
    }
}

#[test]
fn the_third_ctrl_c_kills_the_job_at_once() {
    let sb = Sandbox::new();
    let (launcher, pids) = start_job(&sb, "60");
    for _ in 0..3 {
        kill(launcher.id() as i32, libc::SIGINT);
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, stderr) = finish(launcher, &pids, Duration::from_secs(10));
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("third interrupt"), "{stderr}");
}
