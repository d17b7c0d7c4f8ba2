//! Supervising a job: run it, tell what happened, and restart it from
//! `checkpoint_last` when a rank died or the ranks were preempted by a
//! signal that was not aimed at the launcher (`--max-restarts`, as torchrun's).
//! A stop asked of the launcher itself is final: it exits 75 once every rank saved.

use crate::mpirun::CommandLine;
use crate::rank_report::RankExit;
use crate::run::{run_attempt, Attempt, ATTEMPT_ENV, EXIT_PREEMPTED};
use crate::stop::{self, signal_name};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Supervision<'a> {
    pub mpirun: &'a CommandLine,
    pub ranks: usize,
    pub log_dir: &'a Path,
    /// The run's save dir: restarts are recorded in its metrics.jsonl.
    pub save_dir: Option<PathBuf>,
    pub max_restarts: u32,
    pub restart_delay: Duration,
}

/// What one attempt amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every rank exited 0.
    Finished,
    /// Every rank saved `checkpoint_last` and stopped (75), or some had already finished.
    Stopped,
    /// A rank failed (the first to do so), or mpirun did before any rank reported.
    Failed(Option<RankExit>),
}

pub fn outcome(attempt: &Attempt, stop_requested: bool) -> Outcome {
    let first_failure =
        attempt.exits.iter().filter(|e| e.code != 0 && e.code != EXIT_PREEMPTED).min_by_key(|e| e.at_ns).cloned();
    if first_failure.is_some() || attempt.mpirun_code != 0 {
        return Outcome::Failed(first_failure);
    }
    // mpirun exits 0 only when every process did, and a wrapper exits 0 for
    // 0 and for 75: a report that mpirun dropped on the way (it can lose a
    // process's last line at exit) ended as the others did.
    let stopped = match attempt.exits.is_empty() {
        true => stop_requested,
        false => attempt.exits.iter().any(|e| e.code == EXIT_PREEMPTED),
    };
    if stopped {
        Outcome::Stopped
    } else {
        Outcome::Finished
    }
}

/// Runs the job until it finishes, stops, fails for good, or runs out of restarts.
pub fn supervise(job: &Supervision) -> Result<ExitCode> {
    let mut restarts = 0;
    loop {
        if let Some(sig) = stop::requested() {
            eprintln!("elfin: stopped by {} before the ranks started; nothing to save", signal_name(sig));
            return Ok(ExitCode::from(EXIT_PREEMPTED as u8));
        }
        let mut mpirun = job.mpirun.clone();
        mpirun.set_env(ATTEMPT_ENV, &restarts.to_string());
        let attempt = run_attempt(&mpirun, job.ranks)?;
        let outcome = outcome(&attempt, stop::requested().is_some());
        let logs = job.log_dir.display();
        if stop::killed() {
            eprintln!(
                "elfin: killed at the third interrupt; nothing was saved since the last checkpoint (logs in {logs})"
            );
            return Ok(ExitCode::from(128 + libc::SIGINT as u8));
        }
        let cause = match (&outcome, stop::requested()) {
            (Outcome::Finished, _) => {
                eprintln!("elfin: all {} ranks finished; logs in {logs}", job.ranks);
                return Ok(ExitCode::SUCCESS);
            }
            (Outcome::Stopped, Some(sig)) => {
                eprintln!(
                    "elfin: stopped by {}: every rank saved {}; launch again to resume (logs in {logs})",
                    signal_name(sig),
                    last_checkpoint(job.save_dir.as_deref())
                );
                return Ok(ExitCode::from(EXIT_PREEMPTED as u8));
            }
            (Outcome::Stopped, None) => {
                format!(
                    "the ranks were stopped by a signal not sent to elfin launch and saved {}",
                    last_checkpoint(job.save_dir.as_deref())
                )
            }
            // A rank that never got to handle stops cannot have trained:
            // no update happened since the last checkpoint.
            (Outcome::Failed(_), Some(sig)) if attempt.ready.len() < job.ranks => {
                eprintln!(
                    "elfin: stopped by {} while the ranks were starting, before any update; {} is as it was (logs in {logs})",
                    signal_name(sig),
                    last_checkpoint(job.save_dir.as_deref())
                );
                return Ok(ExitCode::from(EXIT_PREEMPTED as u8));
            }
            (Outcome::Failed(first), requested) => {
                let (message, code) = failure(first.as_ref(), &attempt, job.log_dir);
                eprintln!("elfin: {message}");
                if requested.is_some() || attempt.ready.is_empty() && attempt.exits.is_empty() {
                    // Stopping anyway, or mpirun could not start the job: a restart would not help.
                    return Ok(ExitCode::from(code));
                }
                if restarts >= job.max_restarts {
                    if job.max_restarts > 0 {
                        eprintln!("elfin: no restarts left (--max-restarts {})", job.max_restarts);
                    }
                    return Ok(ExitCode::from(code));
                }
                message
            }
        };
        if restarts >= job.max_restarts {
            eprintln!(
                "elfin: {cause}; exiting with status {EXIT_PREEMPTED} (--max-restarts {} to restart)",
                job.max_restarts
            );
            return Ok(ExitCode::from(EXIT_PREEMPTED as u8));
        }
        restarts += 1;
        eprintln!(
            "elfin: restart {restarts} of {} in {:.0} s, from {}: {cause}",
            job.max_restarts,
            job.restart_delay.as_secs_f64(),
            last_checkpoint(job.save_dir.as_deref())
        );
        if let Some(dir) = &job.save_dir {
            record_restart(dir, restarts, job.max_restarts, &cause, &attempt, &outcome)?;
        }
        wait_unless_stopped(job.restart_delay);
    }
}

fn last_checkpoint(save_dir: Option<&Path>) -> String {
    match save_dir {
        Some(dir) => dir.join("checkpoint_last.safetensors").display().to_string(),
        None => "checkpoint_last".into(),
    }
}

/// Ranks that were running but ended without a word, by host: their
/// wrappers died with them, as when a whole node (or its Open MPI daemon)
/// goes. (The ranks mpirun then kills say `stopping` first.)
fn silent_ranks(attempt: &Attempt) -> BTreeMap<&str, Vec<u32>> {
    let mut by_host: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (rank, host) in &attempt.ready {
        if !attempt.exits.iter().any(|e| e.rank == *rank) && !attempt.stopping.contains_key(rank) {
            by_host.entry(host.as_str()).or_default().push(*rank);
        }
    }
    by_host
}

/// The message and exit code of a failed attempt. Ranks lost without a
/// report come first: a rank that fails by itself reports, so they are the
/// likely cause of the others' failures.
fn failure(first: Option<&RankExit>, attempt: &Attempt, log_dir: &Path) -> (String, u8) {
    let lost: Vec<String> = silent_ranks(attempt)
        .iter()
        .map(|(host, ranks)| {
            let list: Vec<String> = ranks.iter().map(u32::to_string).collect();
            let noun = if ranks.len() == 1 { "rank" } else { "ranks" };
            format!("{noun} {} on {host}", list.join(", "))
        })
        .collect();
    let code = first.map_or(attempt.mpirun_code, |e| e.code).clamp(1, 255) as u8;
    let first_text = first.map(|e| format!("{}; its log: {}", e.describe(), e.log));
    if !lost.is_empty() {
        let then = first_text.map(|t| format!("; then {t}")).unwrap_or_default();
        let message = format!(
            "lost {}: ended without a report (the node went down, or its Open MPI daemon died) \
             (logs in {}){then}",
            lost.join(" and "),
            log_dir.display()
        );
        return (message, code);
    }
    match first_text {
        Some(text) => (text, code),
        None => {
            let missing = attempt.exits.len() < attempt.ready.len().max(1);
            let what = if missing { "with ranks that never reported" } else { "before any rank reported" };
            (
                format!(
                    "mpirun failed with exit code {} {what} (see its messages above, and {})",
                    attempt.mpirun_code,
                    log_dir.display()
                ),
                code,
            )
        }
    }
}

/// Sleeps `delay`, or less if a stop is requested meanwhile (the next
/// attempt then does not start).
fn wait_unless_stopped(delay: Duration) {
    let start = Instant::now();
    while start.elapsed() < delay && stop::requested().is_none() {
        std::thread::sleep(Duration::from_millis(50).min(delay));
    }
}

/// The last `num_updates` logged in `metrics.jsonl`, to say where a restart resumes.
fn last_logged_update(metrics: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(metrics).ok()?;
    text.lines().rev().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("num_updates")?.as_u64())
}

/// Appends `{"kind": "restart", ...}` to the run's metrics.jsonl.
fn record_restart(
    save_dir: &Path,
    restart: u32,
    max_restarts: u32,
    cause: &str,
    attempt: &Attempt,
    outcome: &Outcome,
) -> Result<()> {
    std::fs::create_dir_all(save_dir).with_context(|| format!("creating {}", save_dir.display()))?;
    let path = save_dir.join("metrics.jsonl");
    let mut record = serde_json::json!({
        "kind": "restart",
        "restart": restart,
        "max_restarts": max_restarts,
        "num_updates": last_logged_update(&path).unwrap_or(0),
        "cause": cause,
        "mpirun_exit_code": attempt.mpirun_code,
        "time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
    });
    if let Outcome::Failed(Some(exit)) = outcome {
        record["rank"] = exit.rank.into();
        record["host"] = exit.host.clone().into();
        record["exit_code"] = exit.code.into();
        if exit.signal != 0 {
            record["signal"] = signal_name(exit.signal).into();
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {} to record the restart", path.display()))?;
    writeln!(file, "{record}").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(rank: u32, code: i32, at_ns: u128) -> RankExit {
        RankExit { rank, host: "h".into(), code, signal: 0, at_ns, log: format!("rank-{rank}.log") }
    }

    fn attempt(mpirun_code: i32, exits: Vec<RankExit>) -> Attempt {
        Attempt {
            mpirun_code,
            ready: exits.iter().map(|e| (e.rank, e.host.clone())).collect(),
            stopping: Default::default(),
            exits,
        }
    }

    #[test]
    fn outcomes_from_the_ranks_reports() {
        assert_eq!(outcome(&attempt(0, vec![exit(0, 0, 1), exit(1, 0, 2)]), false), Outcome::Finished);
        assert_eq!(outcome(&attempt(0, vec![exit(0, 75, 1), exit(1, 75, 2)]), true), Outcome::Stopped);
        assert_eq!(outcome(&attempt(0, vec![exit(0, 0, 1), exit(1, 75, 2)]), false), Outcome::Stopped);
        let failed = outcome(&attempt(3, vec![exit(0, 143, 5), exit(1, 3, 2)]), false);
        assert_eq!(failed, Outcome::Failed(Some(exit(1, 3, 2))), "the first failure by time");
        assert_eq!(outcome(&attempt(0, vec![exit(0, 0, 1)]), false), Outcome::Finished, "a report lost, mpirun 0");
        assert_eq!(outcome(&attempt(0, vec![]), true), Outcome::Stopped, "every report lost after a stop");
        assert_eq!(outcome(&attempt(137, vec![exit(0, 0, 1)]), false), Outcome::Failed(None), "a rank died silently");
    }

    #[test]
    fn ranks_lost_with_their_node_are_named_first() {
        let mut lost = attempt(1, vec![exit(0, 1, 9)]);
        lost.ready.extend([(1, "node2".to_string()), (2, "node2".to_string()), (3, "node1".to_string())]);
        lost.stopping.insert(3, "node1".to_string());
        let (message, code) = failure(Some(&lost.exits[0]), &lost, Path::new("logs"));
        assert!(message.starts_with("lost ranks 1, 2 on node2: ended without a report"), "{message}");
        assert!(message.contains("; then rank 0 on h exited with code 1"), "{message}");
        assert_eq!(code, 1);
    }
}
