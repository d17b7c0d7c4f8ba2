//! Stop requests, as `elfin launch` and each `elfin rank` wrapper handle them.
//!
//! A stop request is SIGTERM, SIGINT, SIGHUP or SIGUSR1. The first one is
//! passed on as one SIGUSR1 to the target (mpirun, which forwards SIGUSR1 to
//! every rank without killing anything; or the wrapper's trainer), and only
//! once the target is ready to take it: before that, a SIGUSR1 would kill it.
//! Repeated requests are not passed on, so a scheduler that signals every
//! process of the job, or a launcher and mpirun that both forward, cannot
//! interrupt the ranks' save. The third SIGINT (a person pressing Ctrl-C
//! again and again) kills the target at once.
//!
//! The handler only reads and writes atomics and calls kill(2) and write(2),
//! which are async-signal-safe.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// The signals that ask for a graceful stop.
pub const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];
/// What a stop request becomes on its way to the ranks.
pub const FORWARDED: libc::c_int = libc::SIGUSR1;
/// How many SIGINTs kill the job at once.
pub const INTERRUPTS_TO_KILL: usize = 3;

static FIRST: AtomicI32 = AtomicI32::new(0);
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);
/// Where the request goes: a pid; 0 while there is no target ready.
static TARGET: AtomicI32 = AtomicI32::new(0);
/// What the third SIGINT kills (a pid or a negative process group).
static KILL_TARGET: AtomicI32 = AtomicI32::new(0);
static FORWARDED_ONCE: AtomicUsize = AtomicUsize::new(0);
/// Nonzero in the rank wrappers, whose stderr is the launcher's console: the launcher speaks for them.
static QUIET: AtomicUsize = AtomicUsize::new(0);

fn say(message: &[u8]) {
    if QUIET.load(Ordering::SeqCst) == 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer outlives the call.
        unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len()) };
    }
}

/// Sends the forwarded stop to the target once, if there is a request and a target.
fn pass_on() {
    let target = TARGET.load(Ordering::SeqCst);
    if target != 0 && FIRST.load(Ordering::SeqCst) != 0 && FORWARDED_ONCE.swap(1, Ordering::SeqCst) == 0 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(target, FORWARDED) };
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let first = FIRST.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok();
    if sig == libc::SIGINT && INTERRUPTS.fetch_add(1, Ordering::SeqCst) + 1 >= INTERRUPTS_TO_KILL {
        say(b"elfin: third interrupt: killing every rank now, without saving\n");
        let target = KILL_TARGET.load(Ordering::SeqCst);
        if target != 0 {
            // SAFETY: as in pass_on.
            unsafe { libc::kill(target, libc::SIGKILL) };
        }
        return;
    }
    if first {
        say(b"elfin: stop requested: every rank finishes its update and saves checkpoint_last \
(Ctrl-C three times kills at once, without saving)\n");
    }
    pass_on();
}

/// Installs the handler; `quiet` keeps it from writing (the wrappers of
/// ranks other than 0, whose stderr is the launcher's console).
pub fn install(quiet: bool) {
    QUIET.store(usize::from(quiet), Ordering::SeqCst);
    for sig in STOP_SIGNALS {
        // SAFETY: installs a handler that only touches atomics and calls kill and write.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    set_mask(libc::SIG_UNBLOCK, &STOP_SIGNALS);
}

/// The stop signals but the forwarded one: what mpirun starts with blocked,
/// so that it never acts on a SIGTERM itself (its own answer is to kill the
/// ranks a second later) but still forwards our SIGUSR1.
pub const MPIRUN_BLOCKED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks or unblocks `signals` in the calling thread. A child inherits the
/// mask through exec: a trainer started with the stop signals blocked keeps
/// a request pending until it has its handler.
pub fn set_mask(how: libc::c_int, signals: &[libc::c_int]) {
    // SAFETY: the set is initialised before use; pthread_sigmask has no other preconditions.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// The third SIGINT kills `target` (a pid, or a negative process group).
pub fn set_kill_target(target: i32) {
    KILL_TARGET.store(target, Ordering::SeqCst);
}

/// The stop request goes to `pid` from now on, and now if one is pending.
pub fn set_target(pid: i32) {
    TARGET.store(pid, Ordering::SeqCst);
    pass_on();
}

/// Whether the third SIGINT killed the job.
pub fn killed() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) >= INTERRUPTS_TO_KILL
}

/// The signal of the first stop request, if any.
pub fn requested() -> Option<i32> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGBUS => "SIGBUS".into(),
        s => format!("signal {s}"),
    }
}

/// Whether `pid` has a handler for the forwarded signal and does not block
/// it: only then does a SIGUSR1 ask it to stop rather than kill it.
pub fn ready_for_stop(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = 1u64 << (FORWARDED - 1);
    mask("SigCgt:") & bit != 0 && mask("SigBlk:") & bit == 0
}
