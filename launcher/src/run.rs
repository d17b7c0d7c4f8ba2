//! Running a job once: mpirun in the foreground with the per-rank wrappers
//! (`elfin rank`), each writing its rank's log and reporting to the launcher.
//! What to make of the result, and whether to run again, is `supervise`'s.

use crate::mpi_env;
use crate::mpirun::CommandLine;
use crate::rank_report::{self, host_name, RankExit, RankReady, Report};
use crate::stop;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Set by the launcher for the job's ranks: which attempt this is (0 first,
/// then one more per restart). A restarted rank appends to its log.
pub const ATTEMPT_ENV: &str = "ELFIN_ATTEMPT";

/// The trainer's exit status after a stop that saved `checkpoint_last`.
pub const EXIT_PREEMPTED: i32 = 75;

/// `LOG_DIR/rank-N-HOST.log`: on a shared log dir, which node a rank ran on shows in its name.
/// How long a wrapper waits after its exit report before exiting.
const REPORT_LINGER: Duration = Duration::from_millis(300);

pub fn rank_log(log_dir: &Path, rank: u32, host: &str) -> PathBuf {
    log_dir.join(format!("rank-{rank}-{host}.log"))
}

/// Asks for this process to be killed with `sig` when the thread that started it ends.
fn die_with_parent(sig: libc::c_int) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
}

/// A shell-style exit code: the code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// How one run of mpirun went.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// mpirun's own exit code.
    pub mpirun_code: i32,
    /// Ranks whose trainer got as far as handling stop requests, with their hosts.
    pub ready: BTreeMap<u32, String>,
    /// Ranks whose wrapper got a stop signal (from the launcher, a scheduler, or mpirun
    /// killing the job), with their hosts: they were alive when the job began to end.
    pub stopping: BTreeMap<u32, String>,
    /// Every rank's end, as its wrapper reported it (in the order they came).
    pub exits: Vec<RankExit>,
}

/// Runs mpirun once, in the foreground. mpirun starts with SIGTERM, SIGINT
/// and SIGHUP blocked, so that a SIGTERM sent to every process of the job reaches the
/// ranks once and mpirun does not answer it by killing them; the launcher
/// passes a stop on as SIGUSR1, which mpirun forwards to every rank.
pub fn run_attempt(mpirun: &CommandLine, ranks: usize) -> Result<Attempt> {
    let mut cmd = mpirun.command();
    // Its own process group: a Ctrl-C on the terminal reaches only us.
    cmd.stdin(Stdio::null()).stderr(Stdio::piped()).process_group(0);
    // SAFETY: the closure only calls pthread_sigmask, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            stop::set_mask(libc::SIG_BLOCK, &stop::MPIRUN_BLOCKED);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting mpirun (Open MPI's mpirun must be on PATH)")?;
    let pid = child.id() as i32;
    stop::set_kill_target(-pid);
    let stderr = child.stderr.take().context("mpirun's stderr")?;
    let reader = std::thread::spawn(move || {
        let mut ready = BTreeMap::new();
        let mut stopping = BTreeMap::new();
        let mut exits: Vec<RankExit> = Vec::new();
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
            let line = String::from_utf8_lossy(&buf);
            let (before, reports) = Report::split(&line);
            if reports.is_empty() {
                // mpirun's word for each stop we pass on: ours says more.
                if !line.starts_with("mpirun: Forwarding signal") {
                    let _ = std::io::stderr().write_all(&buf);
                }
            } else if !before.is_empty() {
                let _ = std::io::stderr().write_all(before.as_bytes());
            }
            for report in reports {
                match report {
                    Report::Ready(r) => {
                        ready.insert(r.rank, r.host);
                    }
                    Report::Stopping(r) => {
                        stopping.insert(r.rank, r.host);
                    }
                    Report::Exit(e) => exits.push(e),
                }
            }
            // A stop goes to mpirun only once every rank can take it:
            // until then, the forwarded SIGUSR1 would kill a rank.
            let settled: BTreeSet<u32> = ready.keys().copied().chain(exits.iter().map(|e| e.rank)).collect();
            if settled.len() >= ranks {
                stop::set_target(pid);
            }
            buf.clear();
        }
        (ready, stopping, exits)
    });
    let status = child.wait().context("waiting for mpirun")?;
    stop::set_target(0);
    let (ready, stopping, exits) = reader.join().unwrap_or_default();
    Ok(Attempt { mpirun_code: exit_code(status), ready, stopping, exits })
}

/// The per-rank wrapper mpirun starts on every slot: runs the trainer with
/// its output in `LOG_DIR/rank-N-HOST.log` (rank 0's also on the console), passes
/// stop requests on once the trainer handles them, and reports to the
/// launcher. It exits 0 when the trainer saved and stopped (75), so that
/// mpirun does not abort the ranks that are still saving.
pub fn run_rank(log_dir: &Path, trainer: &[String]) -> Result<ExitCode> {
    let mpi =
        mpi_env::detect_here().context("`elfin rank` is started by `elfin launch` through mpirun, not by hand")?;
    // If mpirun (or its daemon) goes, so do we, and with us the trainer.
    die_with_parent(libc::SIGKILL);
    let host = host_name();
    std::fs::create_dir_all(log_dir).with_context(|| format!("creating log dir {}", log_dir.display()))?;
    let log_path = rank_log(log_dir, mpi.rank, &host);
    let attempt: u32 = std::env::var(ATTEMPT_ENV).ok().and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut log = if attempt == 0 {
        File::create(&log_path)
    } else {
        OpenOptions::new().create(true).append(true).open(&log_path)
    }
    .with_context(|| format!("opening {}", log_path.display()))?;
    if attempt > 0 {
        writeln!(log, "\n=== elfin: restart {attempt}: rank {} on {host} ===", mpi.rank)?;
    }

    let (program, args) = trainer.split_first().context("no trainer command given")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: the closure only calls prctl and pthread_sigmask, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            die_with_parent(libc::SIGKILL);
            // The trainer unblocks them once its handler is in place (see elfin-train's signals).
            stop::set_mask(libc::SIG_BLOCK, &stop::STOP_SIGNALS);
            Ok(())
        });
    }
    let tee = mpi.rank == 0;
    if tee {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdout(log.try_clone()?).stderr(log.try_clone()?);
    }
    let log = Arc::new(Mutex::new(log));
    let report = |code: i32, signal: i32, why: String| {
        if code != 0 {
            let _ = writeln!(log.lock().unwrap_or_else(|e| e.into_inner()), "elfin: rank {}: {why}", mpi.rank);
        }
        let exit = RankExit {
            rank: mpi.rank,
            host: host.clone(),
            code,
            signal,
            at_ns: now_ns(),
            log: log_path.display().to_string(),
        };
        rank_report::emit(&exit.line());
        // mpirun can drop a process's last output when it sees the process end
        // (and abort the job) first: stay long enough for the report to be read.
        std::thread::sleep(REPORT_LINGER);
        match code {
            0 | EXIT_PREEMPTED => ExitCode::SUCCESS,
            c => ExitCode::from(c.clamp(1, 255) as u8),
        }
    };
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => return Ok(report(127, 0, format!("cannot start {program}: {err}"))),
    };
    let pid = child.id() as i32;
    let copies = if tee {
        let out = child.stdout.take().map(|s| copy_to(s, std::io::stdout(), log.clone()));
        let err = child.stderr.take().map(|s| copy_to(s, std::io::stderr(), log.clone()));
        vec![out, err].into_iter().flatten().collect()
    } else {
        Vec::new()
    };
    let me = RankReady { rank: mpi.rank, host: host.clone() };
    let status =
        wait_reporting(&mut child, pid, || rank_report::emit(&me.line()), || rank_report::emit(&me.stopping_line()))?;
    for copy in copies {
        let _ = copy.join();
    }
    let code = exit_code(status);
    let signal = status.signal().unwrap_or(0);
    let why = match signal {
        0 => format!("{program} exited with code {code}"),
        s => format!("{program} was killed by {}", stop::signal_name(s)),
    };
    Ok(report(code, signal, why))
}

/// Waits for the trainer; once it handles stop requests, makes it the
/// target of ours and calls `ready` (once); calls `stopping` (once) when a
/// stop signal comes, at once: mpirun's own SIGTERM is followed by a SIGKILL.
fn wait_reporting(child: &mut Child, pid: i32, ready: impl Fn(), stopping: impl Fn()) -> Result<ExitStatus> {
    let mut is_ready = false;
    let mut is_stopping = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if !is_stopping && stop::requested().is_some() {
            is_stopping = true;
            stopping();
        }
        if !is_ready && stop::ready_for_stop(pid) {
            is_ready = true;
            stop::set_target(pid);
            ready();
        }
        std::thread::sleep(Duration::from_millis(if is_ready { 20 } else { 10 }));
    }
}

/// Copies a child's output to the console and to the rank's log as it comes.
fn copy_to(
    mut from: impl Read + Send + 'static,
    mut console: impl Write + Send + 'static,
    log: Arc<Mutex<File>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = console.write_all(&buf[..n]);
            let _ = console.flush();
            let _ = log.lock().unwrap_or_else(|e| e.into_inner()).write_all(&buf[..n]);
        }
    })
}
