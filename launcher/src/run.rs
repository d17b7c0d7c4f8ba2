//! Running a job: mpirun in the foreground, the per-rank wrapper that
//! writes each rank's log, signal forwarding, and the exit code.

use crate::mpi_env;
use crate::mpirun::CommandLine;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The line a failing rank's wrapper writes to stderr; mpirun carries it to
/// the launcher, which turns it into its message and exit code.
const EXIT_MARKER: &str = "@elfin-rank-exit";

/// How long a child gets after a forwarded signal before it is killed.
const LAUNCHER_GRACE: Duration = Duration::from_secs(8);
const RANK_GRACE: Duration = Duration::from_secs(5);

pub fn rank_log(log_dir: &Path, rank: u32) -> PathBuf {
    log_dir.join(format!("rank-{rank}.log"))
}

// Signal forwarding: the handler only reads and writes atomics and calls
// kill(2), both async-signal-safe.
static TARGET: AtomicI32 = AtomicI32::new(0);
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
    let target = TARGET.load(Ordering::SeqCst);
    if target != 0 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(target, sig) };
    }
}

fn forward_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only touches atomics and calls kill.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// From now on signals go to `target` (a pid, or a negative process group);
/// one that came before the child existed is sent now.
fn set_target(target: i32) {
    TARGET.store(target, Ordering::SeqCst);
    let pending = RECEIVED.load(Ordering::SeqCst);
    if pending != 0 {
        // SAFETY: as in the handler.
        unsafe { libc::kill(target, pending) };
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Asks the parent to be killed with `sig` when the process that started it dies.
fn die_with_parent(sig: libc::c_int) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
}

/// Waits for `child`; once a signal has been forwarded, kills `kill_target`
/// if the child has not stopped within `grace`.
fn wait_forwarding(child: &mut Child, kill_target: i32, grace: Duration) -> Result<ExitStatus> {
    let mut signalled: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if RECEIVED.load(Ordering::SeqCst) != 0 {
            let since = *signalled.get_or_insert_with(Instant::now);
            if since.elapsed() > grace {
                // SAFETY: as in the handler.
                unsafe { libc::kill(kill_target, libc::SIGKILL) };
                return Ok(child.wait()?);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A shell-style exit code: the code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// A rank's failure as its wrapper reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RankExit {
    rank: u32,
    code: i32,
    at_ns: u128,
    log: String,
}

impl RankExit {
    fn line(&self) -> String {
        format!("{EXIT_MARKER} rank={} code={} at={} log={}", self.rank, self.code, self.at_ns, self.log)
    }

    fn parse(line: &str) -> Option<RankExit> {
        let rest = line.trim_end().strip_prefix(EXIT_MARKER)?.trim_start();
        let (head, log) = rest.split_once(" log=")?;
        let mut rank = None;
        let mut code = None;
        let mut at_ns = None;
        for field in head.split_whitespace() {
            match field.split_once('=')? {
                ("rank", v) => rank = v.parse().ok(),
                ("code", v) => code = v.parse().ok(),
                ("at", v) => at_ns = v.parse().ok(),
                _ => {}
            }
        }
        Some(RankExit { rank: rank?, code: code?, at_ns: at_ns?, log: log.to_string() })
    }
}

/// Runs mpirun in the foreground and returns the job's exit code: 0, the
/// first failing rank's code, or 128 + the signal that stopped the launch.
pub fn run_job(mpirun: &CommandLine, log_dir: &Path, ranks: usize) -> Result<ExitCode> {
    forward_signals();
    let mut cmd = mpirun.command();
    // mpirun gets its own process group: a Ctrl-C reaches it once, through
    // us, instead of twice (Open MPI takes a second one as "kill at once").
    cmd.stdin(Stdio::null()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().context("starting mpirun (Open MPI's mpirun must be on PATH)")?;
    let pid = child.id() as i32;
    set_target(pid);
    let stderr = child.stderr.take().context("mpirun's stderr")?;
    let reader = std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
            let line = String::from_utf8_lossy(&buf);
            match RankExit::parse(&line) {
                Some(exit) => failures.push(exit),
                None => {
                    let _ = std::io::stderr().write_all(&buf);
                }
            }
            buf.clear();
        }
        failures
    });
    let status = wait_forwarding(&mut child, -pid, LAUNCHER_GRACE)?;
    let failures = reader.join().unwrap_or_default();
    let signal = RECEIVED.load(Ordering::SeqCst);
    if signal != 0 {
        eprintln!(
            "elfin: stopped by {}; every rank was told to stop (logs in {})",
            signal_name(signal),
            log_dir.display()
        );
        return Ok(ExitCode::from((128 + signal) as u8));
    }
    // Ranks that mpirun stopped after the first failure report later ones.
    if let Some(first) = failures.iter().min_by_key(|f| f.at_ns) {
        eprintln!("elfin: rank {} failed with exit code {}; its log: {}", first.rank, first.code, first.log);
        return Ok(ExitCode::from(first.code.clamp(1, 255) as u8));
    }
    let code = exit_code(status);
    if code != 0 {
        eprintln!(
            "elfin: mpirun failed with exit code {code} before any rank reported (see its messages above, and {})",
            log_dir.display()
        );
        return Ok(ExitCode::from(code.clamp(1, 255) as u8));
    }
    eprintln!("elfin: all {ranks} ranks finished; logs in {}", log_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The per-rank wrapper mpirun starts on every slot: runs the trainer with
/// its output in `LOG_DIR/rank-N.log` (rank 0's also on the console),
/// forwards signals, and reports a failure to the launcher.
pub fn run_rank(log_dir: &Path, trainer: &[String]) -> Result<ExitCode> {
    let mpi =
        mpi_env::detect_here().context("`elfin rank` is started by `elfin launch` through mpirun, not by hand")?;
    // If mpirun (or its daemon) goes, so do we, and with us the trainer.
    die_with_parent(libc::SIGTERM);
    std::fs::create_dir_all(log_dir).with_context(|| format!("creating log dir {}", log_dir.display()))?;
    let log_path = rank_log(log_dir, mpi.rank);
    let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    forward_signals();

    let (program, args) = trainer.split_first().context("no trainer command given")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            die_with_parent(libc::SIGKILL);
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
    let report = |code: i32, why: String| {
        let _ = writeln!(log.lock().unwrap_or_else(|e| e.into_inner()), "elfin: rank {}: {why}", mpi.rank);
        let exit = RankExit { rank: mpi.rank, code, at_ns: now_ns(), log: log_path.display().to_string() };
        eprintln!("{}", exit.line());
        ExitCode::from(code.clamp(1, 255) as u8)
    };
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => return Ok(report(127, format!("cannot start {program}: {err}"))),
    };
    let pid = child.id() as i32;
    set_target(pid);
    let copies = if tee {
        let out = child.stdout.take().map(|s| copy_to(s, std::io::stdout(), log.clone()));
        let err = child.stderr.take().map(|s| copy_to(s, std::io::stderr(), log.clone()));
        vec![out, err].into_iter().flatten().collect()
    } else {
        Vec::new()
    };
    let status = wait_forwarding(&mut child, pid, RANK_GRACE)?;
    for copy in copies {
        let _ = copy.join();
    }
    let code = exit_code(status);
    if code == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(report(code, format!("{program} exited with code {code}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reports_survive_the_trip_through_mpirun() {
        let exit = RankExit { rank: 3, code: 7, at_ns: 1234, log: "/tmp/a b/rank-3.log".into() };
        assert_eq!(RankExit::parse(&format!("{}\n", exit.line())), Some(exit));
        assert_eq!(RankExit::parse("rank 3 said something"), None);
    }
}
