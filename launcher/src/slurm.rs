//! Slurm: inside an allocation (an `sbatch` script, `salloc`), the ranks
//! are the tasks of one `srun` step, and Open MPI learns its world from
//! srun's PMIx server (Debian's Open MPI 4.1 cannot use srun's PMI-2).

use crate::mpi_env::MpiEnv;
use anyhow::{bail, Result};
use std::ffi::OsString;
use std::path::Path;

/// A Slurm allocation that this process runs in, outside any job step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub job_id: String,
    /// SLURM_NTASKS: the tasks (ranks) the allocation was made for.
    pub tasks: Option<String>,
    pub nodes: Option<String>,
}

pub fn allocation(env: &dyn Fn(&str) -> Option<String>) -> Option<Allocation> {
    // A job step's tasks are ranks themselves (see mpi_env).
    if env("SLURM_STEP_ID").is_some() {
        return None;
    }
    Some(Allocation { job_id: env("SLURM_JOB_ID")?, tasks: env("SLURM_NTASKS"), nodes: env("SLURM_JOB_NODELIST") })
}

/// The job step that runs this `elfin` again on every task: each becomes its
/// rank's trainer. `--kill-on-bad-exit` ends the step when one task dies
/// (the others would wait for it forever), and srun names the task, node and
/// exit status.
pub fn step_command(elfin: &Path, args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut argv: Vec<OsString> = ["srun", "--mpi=pmix", "--kill-on-bad-exit=1"].map(OsString::from).to_vec();
    argv.push(elfin.into());
    argv.extend(args);
    argv
}

/// A task srun started without PMIx only knows its SLURM_PROCID: MPI would
/// make it a world of one, and every task would train alone over the same files.
pub fn check_task(mpi: &MpiEnv, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    let tasks: u32 = env("SLURM_NTASKS").and_then(|n| n.parse().ok()).unwrap_or(1);
    if mpi.var == "SLURM_PROCID" && tasks > 1 {
        bail!(
            "task {} of {tasks} of a Slurm job step started without PMIx (no PMIX_RANK): each task would train \
             alone; start the step with `srun --mpi=pmix` (or MpiDefault=pmix in slurm.conf)",
            mpi.rank
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |n| map.get(n).cloned()
    }

    #[test]
    fn an_allocation_is_a_job_outside_its_steps() {
        assert_eq!(allocation(&env_of(&[])), None);
        let batch = env_of(&[("SLURM_JOB_ID", "7"), ("SLURM_NTASKS", "2"), ("SLURM_JOB_NODELIST", "n[1-2]")]);
        let found = allocation(&batch).unwrap();
        assert_eq!(
            (found.job_id.as_str(), found.tasks.as_deref(), found.nodes.as_deref()),
            ("7", Some("2"), Some("n[1-2]"))
        );
        assert_eq!(allocation(&env_of(&[("SLURM_JOB_ID", "7"), ("SLURM_STEP_ID", "0")])), None);
    }

    #[test]
    fn tasks_without_pmix_are_refused_when_there_are_several() {
        let no_pmix = MpiEnv { var: "SLURM_PROCID", rank: 1 };
        let err = check_task(&no_pmix, &env_of(&[("SLURM_NTASKS", "2")])).unwrap_err().to_string();
        assert!(err.contains("srun --mpi=pmix"), "{err}");
        assert!(check_task(&no_pmix, &env_of(&[("SLURM_NTASKS", "1")])).is_ok());
        assert!(check_task(&MpiEnv { var: "PMIX_RANK", rank: 1 }, &env_of(&[("SLURM_NTASKS", "2")])).is_ok());
    }
}
