//! Graceful stop on a stop request: SIGTERM (preemption, `kill`), SIGUSR1
//! (what `elfin launch` sends through mpirun, which forwards SIGUSR1 to every
//! rank without killing it), SIGHUP, and SIGINT (Ctrl-C).
//!
//! The first request only sets a flag: the loop finishes the current update,
//! agrees with the other ranks that someone was asked to stop (it
//! all-reduces [`stop_requested`]), saves `checkpoint_last` and exits with
//! [`EXIT_PREEMPTED`]. Schedulers and launchers often deliver one stop
//! several times (to every process of a job, and again through mpirun), so
//! repeated requests are ignored: nothing may interrupt the save. The one
//! escape hatch is for a person at a terminal: the third SIGINT exits at
//! once with status 130, without saving.
//!
//! `elfin launch` starts the trainer with these signals blocked, so that a
//! request that comes while libtorch is still loading waits instead of
//! killing the process; [`install`] unblocks them once the handler is in place.

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// Exit status after a signal-triggered stop that saved `checkpoint_last`:
/// the run is resumable by starting it again with the same `--save-dir`.
/// (75 is `EX_TEMPFAIL` in sysexits.h: "temporary failure, retry".)
pub const EXIT_PREEMPTED: i32 = 75;

/// The signals that ask for a graceful stop.
pub const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGUSR1, libc::SIGHUP, libc::SIGINT];

/// How many SIGINTs end the process at once, without saving.
pub const INTERRUPTS_TO_KILL: usize = 3;

static RECEIVED: AtomicUsize = AtomicUsize::new(0);
/// Nonzero for commands with nothing to save: the first stop request exits.
static EXIT_ON_STOP: AtomicUsize = AtomicUsize::new(0);
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// For a command with nothing to save (`eval`): the first stop request
/// exits with [`EXIT_PREEMPTED`]; run it again to redo it.
pub fn install_exit_on_stop() -> Result<()> {
    EXIT_ON_STOP.store(1, Ordering::SeqCst);
    install()
}

/// Installs the handler for the stop signals, then unblocks them (idempotent).
pub fn install() -> Result<()> {
    // SAFETY: `on_signal` only touches atomics and calls async-signal-safe
    // functions (write, _exit); the sigaction and sigset structs are fully initialised.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in STOP_SIGNALS {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot install the handler for signal {signal}"));
            }
            libc::sigaddset(&mut set, signal);
        }
        let failed = libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        if failed != 0 {
            return Err(std::io::Error::from_raw_os_error(failed)).context("cannot unblock the stop signals");
        }
    }
    Ok(())
}

/// Whether this process received a stop request.
pub fn stop_requested() -> bool {
    RECEIVED.load(Ordering::SeqCst) > 0
}

/// The signal of the first stop request, if any.
pub fn received_signal() -> Option<i32> {
    match FIRST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

fn say(message: &[u8]) {
    // SAFETY: write(2) is async-signal-safe; the buffer is static.
    unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len()) };
}

extern "C" fn on_signal(signal: libc::c_int) {
    if EXIT_ON_STOP.load(Ordering::SeqCst) != 0 {
        say(b"elfin-train: stop requested: exiting (nothing to save)\n");
        // SAFETY: _exit(2) is async-signal-safe.
        unsafe { libc::_exit(EXIT_PREEMPTED) };
    }
    let _ = FIRST_SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    let count = RECEIVED.fetch_add(1, Ordering::SeqCst) + 1;
    let interrupts = if signal == libc::SIGINT {
        INTERRUPTS.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        INTERRUPTS.load(Ordering::SeqCst)
    };
    if interrupts >= INTERRUPTS_TO_KILL {
        say(b"elfin-train: third interrupt: exiting now without saving\n");
        // SAFETY: _exit(2) is async-signal-safe.
        unsafe { libc::_exit(128 + libc::SIGINT) };
    }
    match count {
        1 => say(
            b"elfin-train: stop requested: finishing this update, saving checkpoint_last, then exiting with status 75 \
(repeated stop signals are ignored; press Ctrl-C three times to exit at once without saving)\n",
        ),
        2 => say(b"elfin-train: already stopping; repeated stop signals are ignored until checkpoint_last is saved\n"),
        _ => {}
    }
}

/// Restores the default action of SIGPIPE, which Rust ignores: a command whose
/// reader has gone (`| head`) then ends quietly with status 141 instead of
/// panicking on the failed write.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// A stop signal's name, for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1 (a stop passed on by elfin launch)",
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}
