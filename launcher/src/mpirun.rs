//! The `mpirun` command line for a plan.

use crate::plan::{Device, Plan};
use crate::quote::shell_join;
use std::path::Path;
use std::process::Command;

/// A program with arguments and extra environment, printable as one shell line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub env: Vec<(String, String)>,
    pub argv: Vec<String>,
}

impl CommandLine {
    pub fn display(&self) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        shell_join(&[env, self.argv.clone()].concat())
    }

    /// Sets `name` for the program (exported to mpirun's ranks too when it is forwarded with `-x`).
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// Environment variables of the launcher's own environment that the ranks
/// on other nodes need too (mpirun starts them with a bare environment).
pub fn forwarded_from_env(names: impl Iterator<Item = String>) -> Vec<String> {
    const EXACT: &[&str] = &["PATH", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES"];
    const PREFIXES: &[&str] = &["ELFIN_", "NCCL_", "RUST_", "TORCH_", "CUDA_", "OMP_", "MKL_"];
    let mut out: Vec<String> =
        names.filter(|n| EXACT.contains(&n.as_str()) || PREFIXES.iter().any(|p| n.starts_with(p))).collect();
    out.sort();
    out
}

pub struct Job<'a> {
    pub plan: &'a Plan,
    /// This `elfin` binary: it runs on every slot as the per-rank wrapper.
    pub elfin: &'a Path,
    pub log_dir: &'a Path,
    /// The trainer's full command line (its path first).
    pub trainer: &'a [String],
    /// The preset's `export`s, set for every rank.
    pub exported: &'a [(String, String)],
    /// Names from the launcher's environment to pass on (see `forwarded_from_env`).
    pub forward: &'a [String],
    pub as_root: bool,
}

/// `mpirun` with one `elfin rank` wrapper per slot, each running the trainer.
pub fn mpirun_command(job: &Job) -> CommandLine {
    let plan = job.plan;
    let mut env = job.exported.to_vec();
    // The user's own OMP_NUM_THREADS, if any, is forwarded as it is.
    if !job.forward.iter().any(|n| n == "OMP_NUM_THREADS") {
        env.push(("OMP_NUM_THREADS".into(), plan.threads_per_rank.to_string()));
    }
    // Which attempt the ranks belong to (the supervisor sets it per restart).
    env.push((crate::run::ATTEMPT_ENV.into(), "0".into()));
    let mut args: Vec<String> = vec!["mpirun".into()];
    if job.as_root {
        args.push("--allow-run-as-root".into());
    }
    args.extend(["-np".into(), plan.total_ranks.to_string()]);
    if !plan.hosts.is_empty() {
        let hosts: Vec<String> = plan.hosts.iter().map(|(h, n)| format!("{h}:{n}")).collect();
        args.extend(["--host".into(), hosts.join(",")]);
    }
    // Count logical CPUs as `available_parallelism` does, so "ranks exceed
    // cores" means the same to us and to Open MPI.
    args.push("--use-hwthread-cpus".into());
    match (plan.device, plan.oversubscribe) {
        // Give each CPU rank its own share of the cores for its intra-op threads
        // (Open MPI's default would pin each rank to a single core).
        (Device::Cpu, false) => {
            args.extend(["--map-by".into(), format!("slot:PE={}", plan.threads_per_rank)]);
            args.extend(["--bind-to".into(), "hwthread".into()]);
        }
        // GPU ranks mostly wait on their GPU, and where their data threads
        // should run depends on the node's topology: let the kernel place them.
        _ => args.extend(["--map-by", "slot", "--bind-to", "none"].map(String::from)),
    }
    if plan.oversubscribe {
        args.push("--oversubscribe".into());
    }
    let mut names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for name in job.forward {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    for name in names {
        args.extend(["-x".into(), name.to_string()]);
    }
    args.push(job.elfin.display().to_string());
    args.extend(["rank".into(), "--log-dir".into(), job.log_dir.display().to_string(), "--".into()]);
    args.extend(job.trainer.iter().cloned());
    CommandLine { env, argv: args }
}

/// The trainer's `--check-only` run for a job: here for one node, else one
/// process on each host through mpirun, each with the ranks' environment.
pub fn check_command(job: &Job, scope: &str) -> CommandLine {
    let mut trainer = job.trainer.to_vec();
    trainer.push(format!("--check-only={scope}"));
    let env = job.exported.to_vec();
    if job.plan.hosts.is_empty() {
        return CommandLine { env, argv: trainer };
    }
    let mut args: Vec<String> = vec!["mpirun".into()];
    if job.as_root {
        args.push("--allow-run-as-root".into());
    }
    let hosts: Vec<String> = job.plan.hosts.iter().map(|(h, _)| format!("{h}:1")).collect();
    args.extend(["-np".into(), hosts.len().to_string(), "--host".into(), hosts.join(",")]);
    for name in env.iter().map(|(k, _)| k.as_str()).chain(job.forward.iter().map(String::as_str)) {
        args.extend(["-x".into(), name.to_string()]);
    }
    args.extend(trainer);
    CommandLine { env, argv: args }
}
