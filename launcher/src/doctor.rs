//! `elfin doctor`: whether this machine (and the hosts of a hostfile) can run
//! elfin, one PASS/FAIL/SKIP line per check with what to do on FAIL, exit 0
//! only if nothing failed. The launcher checks what needs no libtorch (its
//! own version, Open MPI) and runs `elfin-train doctor` for the rest: alone
//! for the libraries, devices, NVRTC and the loss kernel; under mpirun for
//! the all-reduce across the local GPUs and for MPI between hosts.

#[path = "../../trainer/src/doctor/report.rs"]
mod report;

use crate::launch::trainer_path;
use crate::plan::{visible_gpus, NodeInfo, Nproc};
use anyhow::Result;
use report::{Check, Report};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Print one JSON object ({"checks": [{"check", "status", "detail", "fix"}]}) instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Ranks of the local all-reduce check: a number, or `auto` for one per visible GPU.
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    pub nproc_per_node: Nproc,
    /// An Open MPI hostfile: also check MPI between its hosts (one rank on each).
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
}

pub fn run(args: DoctorArgs) -> Result<ExitCode> {
    let mut checks = vec![Check::pass("elfin", format!("elfin {}", env!("CARGO_PKG_VERSION")))];
    let mpirun = open_mpi_check();
    let have_mpirun = mpirun.status == report::Status::Pass;
    checks.push(mpirun);
    let trainer = trainer_path()?;
    if !trainer.exists() {
        checks.push(Check::fail(
            "elfin-train",
            format!("{} does not exist", trainer.display()),
            "build it (cargo build --release -p elfin-trainer) or set ELFIN_TRAIN_BIN",
        ));
    } else {
        checks.extend(trainer_checks("elfin-train doctor", Command::new(&trainer).arg("doctor")));
        let local = match args.nproc_per_node {
            Nproc::Count(n) => n,
            Nproc::Auto => {
                let cuda_visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
                visible_gpus(false, cuda_visible.as_deref(), &NodeInfo::detect()).map_or(0, |(n, _)| n)
            }
        };
        checks.extend(match (local, have_mpirun) {
            (0 | 1, _) => vec![Check::skip(
                "local all-reduce",
                format!("{local} GPU(s) visible: nothing to all-reduce across; --nproc-per-node N checks N ranks"),
            )],
            (_, false) => vec![Check::skip("local all-reduce", "no mpirun (see the Open MPI line)")],
            (n, true) => {
                let mut cmd = mpirun_command(&["-np", &n.to_string(), "--oversubscribe"]);
                cmd.arg(&trainer).args(["doctor", "--collectives"]);
                trainer_checks("local all-reduce", &mut cmd)
            }
        });
        checks.extend(match (&args.hostfile, have_mpirun) {
            (None, _) => vec![Check::skip("MPI between hosts", "no --hostfile given")],
            (Some(_), false) => vec![Check::skip("MPI between hosts", "no mpirun (see the Open MPI line)")],
            (Some(hostfile), true) => hosts_checks(&trainer, hostfile),
        });
    }
    let report = Report { checks };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn open_mpi_check() -> Check {
    match Command::new("mpirun").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            Check::pass("Open MPI", text.lines().next().unwrap_or("mpirun").trim().to_string())
        }
        Ok(out) => Check::fail(
            "Open MPI",
            format!("mpirun --version failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
            "check the Open MPI installation (scripts/setup.sh installs it)",
        ),
        Err(e) => Check::fail(
            "Open MPI",
            format!("mpirun cannot be run: {e}"),
            "install Open MPI (scripts/setup.sh does) or put its bin/ on PATH",
        ),
    }
}

fn mpirun_command(args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(args).args(["-x", "OMP_NUM_THREADS=1"]);
    cmd
}

fn hosts_checks(trainer: &Path, hostfile: &Path) -> Vec<Check> {
    let mut cmd = mpirun_command(&["--hostfile", &hostfile.display().to_string(), "--map-by", "ppr:1:node"]);
    cmd.arg(trainer).args(["doctor", "--collectives", "--device", "cpu"]);
    trainer_checks("MPI between hosts", &mut cmd)
}

/// The checks `cmd` (an `elfin-train doctor` command line) reports with `--json`; a FAIL named `what`
/// when it prints none (it could not start, or crashed).
fn trainer_checks(what: &str, cmd: &mut Command) -> Vec<Check> {
    let out = match cmd.arg("--json").output() {
        Ok(out) => out,
        Err(e) => return vec![Check::fail(what, format!("cannot run {cmd:?}: {e}"), "check the path and permissions")],
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reports: Vec<Report> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    if reports.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
        return vec![Check::fail(
            what,
            format!("{cmd:?} printed no report ({}): {}", out.status, tail.join(" | ")),
            "run that command by hand to see its full output",
        )];
    }
    reports.into_iter().flat_map(|r| r.checks).collect()
}
