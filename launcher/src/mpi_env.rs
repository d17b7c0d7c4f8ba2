//! Knowing when we already are one rank of an MPI (or Slurm) job.

/// Where a rank finds its rank, in the order we trust them.
const RANK_VARS: &[&str] = &["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpiEnv {
    /// The variable that told us, e.g. `OMPI_COMM_WORLD_RANK`.
    pub var: &'static str,
    pub rank: u32,
}

/// The MPI environment of this process, if it was started by mpirun or srun.
pub fn detect(env: &dyn Fn(&str) -> Option<String>) -> Option<MpiEnv> {
    RANK_VARS.iter().find_map(|&var| {
        // A batch script also has SLURM_PROCID=0; only srun's job steps are ranks.
        if var == "SLURM_PROCID" && env("SLURM_STEP_ID").is_none() {
            return None;
        }
        let rank = env(var)?.trim().parse().ok()?;
        Some(MpiEnv { var, rank })
    })
}

/// From the process environment.
pub fn detect_here() -> Option<MpiEnv> {
    detect(&|name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Option<MpiEnv> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        detect(&|n| map.get(n).cloned())
    }

    #[test]
    fn finds_the_rank_of_each_launcher() {
        assert_eq!(with(&[]), None);
        assert_eq!(with(&[("OMPI_COMM_WORLD_RANK", "3")]).unwrap().rank, 3);
        assert_eq!(with(&[("PMI_RANK", "1")]).unwrap().var, "PMI_RANK");
        assert_eq!(with(&[("PMIX_RANK", "2"), ("PMI_RANK", "5")]).unwrap().rank, 2);
        assert_eq!(with(&[("SLURM_PROCID", "0")]), None, "an sbatch script is not a rank");
        assert_eq!(with(&[("SLURM_PROCID", "4"), ("SLURM_STEP_ID", "0")]).unwrap().rank, 4);
    }
}
