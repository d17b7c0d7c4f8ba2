//! `elfin launch`: a preset, a plan, and mpirun (or, inside an MPI job, the trainer itself).

use crate::cli::LaunchArgs;
use crate::mpi_env::{self, MpiEnv};
use crate::mpirun::{check_command, forwarded_from_env, mpirun_command, CommandLine, Job};
use crate::plan::{make_plan, read_hostfile, visible_gpus, Device, NodeInfo, Plan, PlanRequest};
use crate::preset::resolve::{resolve, Catalog, ResolveOptions, Resolved};
use crate::quote::shell_join;
use crate::slurm::{self, Allocation};
use crate::stop;
use crate::supervise::{supervise, Supervision};
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Points the launcher at another trainer binary (tests use a shell script).
pub const TRAIN_BIN_ENV: &str = "ELFIN_TRAIN_BIN";

/// `elfin-train`, next to this `elfin` unless ELFIN_TRAIN_BIN says otherwise.
pub fn trainer_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(TRAIN_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("finding the elfin binary")?;
    Ok(exe.with_file_name("elfin-train"))
}

/// The full trainer command line for one rank.
pub fn trainer_command(trainer: &Path, resolved: &Resolved, device: Device) -> Result<Vec<String>> {
    let mut argv =
        vec![trainer.display().to_string(), crate::preset::command::trainer_subcommand(resolved)?.to_string()];
    argv.extend(resolved.trainer_args()?);
    argv.push(format!("--device={}", device.flag_value()));
    Ok(argv)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Synthetic data a demo preset needs and lacks: `(task, dir)`.
fn missing_synth_data(resolved: &Resolved) -> Option<(String, PathBuf)> {
    let task = resolved.get("synth_task").filter(|t| !t.is_empty())?;
    let dir = PathBuf::from(resolved.get("synth_dir").filter(|d| !d.is_empty())?);
    let complete = ["train.tsv", "val.tsv", "bpe"].iter().all(|f| dir.join(f).exists());
    (!complete).then(|| (task.to_string(), dir))
}

fn make_synth_data(synth: &[String]) -> Result<()> {
    let status = Command::new(&synth[0]).args(&synth[1..]).status().with_context(|| format!("running {}", synth[0]))?;
    if !status.success() {
        bail!("making the synthetic data failed ({status}): {}", shell_join(synth));
    }
    Ok(())
}

fn synth_command(trainer: &Path, task: &str, dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    [trainer.display().to_string(), "synth".into(), "--task".into(), task.into(), "--out".into(), dir].to_vec()
}

pub fn run(args: LaunchArgs) -> Result<ExitCode> {
    let catalog = Catalog::from_env(&args.source.preset_dirs);
    let preset = catalog.find(&args.preset)?;
    let options = ResolveOptions { data_root: args.source.data_root.clone(), sets: args.sets.clone() };
    let resolved = resolve(&catalog, &preset, &options, &env)?;
    let trainer = trainer_path()?;
    let cuda_visible = resolved.get("CUDA_VISIBLE_DEVICES").map(String::from).or_else(|| env("CUDA_VISIBLE_DEVICES"));
    let node = NodeInfo::detect();

    // Where the ranks are started for us, each sees the GPUs of its own node.
    let device_here = match visible_gpus(args.cpu, cuda_visible.as_deref(), &node) {
        Some(_) => Device::Cuda,
        None => Device::Cpu,
    };
    if let Some(mpi) = mpi_env::detect_here() {
        slurm::check_task(&mpi, &env)?;
        return become_trainer(&mpi, &trainer, &resolved, device_here, args.dry_run);
    }
    if args.hostfile.is_none() {
        if let Some(allocation) = slurm::allocation(&env) {
            return run_step(&allocation, &trainer, &resolved, device_here, args.dry_run);
        }
    }

    let hosts = args.hostfile.as_deref().map(read_hostfile).transpose()?;
    let request =
        PlanRequest { nproc: args.nproc_per_node, hosts, cpu: args.cpu, cuda_visible: cuda_visible.as_deref() };
    let plan = make_plan(&request, &node)?;
    let log_dir = args
        .log_dir
        .clone()
        .or_else(|| resolved.get("log_dir").filter(|d| !d.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("logs"));
    // Absolute, so every rank (and every message) means the same directory.
    let log_dir = std::path::absolute(&log_dir).with_context(|| format!("log dir {}", log_dir.display()))?;
    let elfin = std::env::current_exe().context("finding the elfin binary")?;
    let trainer_argv = trainer_command(&trainer, &resolved, plan.device)?;
    let exported = resolved.exported();
    let forward = forwarded_from_env(std::env::vars().map(|(k, _)| k));
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let job = Job {
        plan: &plan,
        elfin: &elfin,
        log_dir: &log_dir,
        trainer: &trainer_argv,
        exported: &exported,
        forward: &forward,
        as_root,
    };
    let mpirun = mpirun_command(&job);
    let synth = missing_synth_data(&resolved).map(|(task, dir)| synth_command(&trainer, &task, &dir));

    print_plan(&resolved, &plan, &log_dir, args.hostfile.as_deref());
    if let Some(synth) = &synth {
        println!("first:   {}", shell_join(synth));
    }
    println!("command: {}", mpirun.display());
    if !trainer.is_file() {
        bail!(
            "the trainer {} does not exist; build it (cargo build --release -p elfin-trainer) or set {TRAIN_BIN_ENV}",
            trainer.display()
        );
    }
    if args.dry_run {
        // The synthetic data is made only by a real launch: check the rest.
        let scope = if synth.is_some() { "no-data" } else { "all" };
        return preflight(&check_command(&job, scope), plan.hosts.len(), scope);
    }
    if let Some(synth) = synth {
        make_synth_data(&synth)?;
    }
    let checked = preflight(&check_command(&job, "all"), plan.hosts.len(), "all")?;
    if checked != ExitCode::SUCCESS {
        return Ok(checked);
    }
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating log dir {}", log_dir.display()))?;
    supervise(&Supervision {
        mpirun: &mpirun,
        ranks: plan.total_ranks,
        log_dir: &log_dir,
        save_dir: resolved.flag_value("save-dir").map(PathBuf::from),
        max_restarts: args.max_restarts,
        restart_delay: std::time::Duration::from_secs_f64(args.restart_delay),
    })
}

/// Has the trainer check its command line and paths (`--check-only`), on
/// every host of the plan, before any rank starts; exit status 2 if it refuses.
fn preflight(check: &CommandLine, hosts: usize, scope: &str) -> Result<ExitCode> {
    let out = check
        .command()
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running the trainer's check: {}", check.display()))?;
    let hosts = hosts.max(1);
    if out.status.success() {
        let what = if scope == "all" {
            "flags, BPE, data and checkpoint paths"
        } else {
            "flags, BPE and checkpoint paths (the synthetic data is made at launch)"
        };
        println!("check:   ok on {hosts} host(s): {what}");
        return Ok(ExitCode::SUCCESS);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reason: Vec<&str> = stderr.lines().chain(stdout.lines()).filter(|l| !l.starts_with("check: ")).collect();
    eprintln!("elfin: the trainer refused its command line, so no rank was started:\n{}", reason.join("\n"));
    eprintln!("elfin: (checked with: {})", check.display());
    Ok(ExitCode::from(2))
}

fn print_plan(resolved: &Resolved, plan: &Plan, log_dir: &Path, hostfile: Option<&Path>) {
    println!("preset:  {} ({})", resolved.preset.name, resolved.preset.origin_text());
    println!("device:  {}", plan.device_reason);
    match hostfile {
        None => println!("nodes:   this node"),
        Some(file) => {
            let hosts: Vec<String> = plan.hosts.iter().map(|(h, n)| format!("{h} ({n} ranks)")).collect();
            println!("nodes:   {} from {}: {}", plan.hosts.len(), file.display(), hosts.join(", "));
        }
    }
    let over = if plan.oversubscribe { ", more than the CPUs (oversubscribed)" } else { "" };
    println!(
        "ranks:   {} in all, up to {} per node{over}, {} thread(s) each",
        plan.total_ranks, plan.max_ranks_per_node, plan.threads_per_rank
    );
    println!("logs:    {} (rank 0 also on the console)", log_dir.join("rank-N-HOST.log").display());
}

/// In a Slurm allocation: the synthetic data and the trainer's check here,
/// then one srun step whose every task runs this `elfin` again and becomes a
/// rank (srun's exit status, e.g. 75 after a stop, is the job's).
fn run_step(
    allocation: &Allocation,
    trainer: &Path,
    resolved: &Resolved,
    device: Device,
    dry_run: bool,
) -> Result<ExitCode> {
    let elfin = std::env::current_exe().context("finding the elfin binary")?;
    let step = slurm::step_command(&elfin, std::env::args_os().skip(1));
    let synth = missing_synth_data(resolved).map(|(task, dir)| synth_command(trainer, &task, &dir));
    let unknown = || "?".to_string();
    println!("preset:  {} ({})", resolved.preset.name, resolved.preset.origin_text());
    println!(
        "slurm:   job {}: {} task(s) on {}, each one rank (ranks, nodes and local ranks from Slurm)",
        allocation.job_id,
        allocation.tasks.clone().unwrap_or_else(unknown),
        allocation.nodes.clone().unwrap_or_else(unknown)
    );
    if let Some(synth) = &synth {
        println!("first:   {}", shell_join(synth));
    }
    let shown: Vec<String> = step.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    println!("command: {}", shell_join(&shown));
    let mut check = trainer_command(trainer, resolved, device)?;
    let scope = if dry_run && synth.is_some() { "no-data" } else { "all" };
    check.push(format!("--check-only={scope}"));
    let check = CommandLine { env: resolved.exported(), argv: check };
    if dry_run {
        return preflight(&check, 1, scope);
    }
    if let Some(synth) = synth {
        make_synth_data(&synth)?;
    }
    let checked = preflight(&check, 1, "all")?;
    if checked != ExitCode::SUCCESS {
        return Ok(checked);
    }
    let err = Command::new(&step[0]).args(&step[1..]).exec();
    Err(err).context("starting the job step with srun (is Slurm's srun on PATH?)")
}

/// Inside an MPI job each launched `elfin` becomes its rank's trainer.
fn become_trainer(
    mpi: &MpiEnv,
    trainer: &Path,
    resolved: &Resolved,
    device: Device,
    dry_run: bool,
) -> Result<ExitCode> {
    let argv = trainer_command(trainer, resolved, device)?;
    let exported = resolved.exported();
    let assignments: Vec<String> = exported.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("mpi:     {}={}: already one rank of an MPI job, so this process becomes its trainer", mpi.var, mpi.rank);
    println!("exec:    {}", shell_join(&[assignments, argv.clone()].concat()));
    if dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some((task, dir)) = missing_synth_data(resolved) {
        bail!(
            "the synthetic data in {} is missing; make it before the MPI job: {}",
            dir.display(),
            shell_join(&synth_command(trainer, &task, &dir))
        );
    }
    // The trainer starts with the stop signals blocked and unblocks them once
    // it handles them; a stop that came to us is passed on as a pending signal.
    stop::set_mask(libc::SIG_BLOCK, &stop::STOP_SIGNALS);
    if let Some(sig) = stop::requested() {
        // SAFETY: raise(3) with the signal blocked only marks it pending.
        unsafe { libc::raise(sig) };
    }
    let err = Command::new(&argv[0]).args(&argv[1..]).envs(exported).exec();
    Err(err).with_context(|| format!("starting the trainer {}", argv[0]))
}
