//! Graceful stop on SIGTERM / SIGINT (preemption, Ctrl-C, `elfin launch`
//! forwarding a stop).
//!
//! The first signal only sets a flag: the loop finishes the current update,
//! agrees with the other ranks that someone was asked to stop (it
//! all-reduces [`stop_requested`]), saves `checkpoint_last` and exits with
//! [`EXIT_PREEMPTED`]. A second signal exits at once with `128 + signal`
//! (130 for SIGINT, 143 for SIGTERM), without saving.

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// Exit status after a signal-triggered stop that saved `checkpoint_last`:
/// the run is resumable by starting it again with the same `--save-dir`.
/// (75 is `EX_TEMPFAIL` in sysexits.h: "temporary failure, retry".)
pub const EXIT_PREEMPTED: i32 = 75;

static RECEIVED: AtomicUsize = AtomicUsize::new(0);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Installs the handlers for SIGTERM and SIGINT (idempotent).
pub fn install() -> Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `on_signal` only touches atomics and calls async-signal-safe
        // functions (write, _exit); the sigaction struct is fully initialised.
        let failed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut()) != 0
        };
        if failed {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot install the handler for signal {signal}"));
        }
    }
    Ok(())
}

/// Whether this process received a stop signal.
pub fn stop_requested() -> bool {
    RECEIVED.load(Ordering::SeqCst) > 0
}

/// The last stop signal received, if any.
pub fn received_signal() -> Option<i32> {
    match LAST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    LAST_SIGNAL.store(signal, Ordering::SeqCst);
    let count = RECEIVED.fetch_add(1, Ordering::SeqCst) + 1;
    let message: &[u8] = if count == 1 {
        b"elfin-train: stop signal received: finishing this update, saving checkpoint_last, then exiting (signal again to exit at once)\n"
    } else {
        b"elfin-train: second stop signal: exiting now without saving\n"
    };
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is static.
    unsafe {
        libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len());
        if count > 1 {
            libc::_exit(128 + signal);
        }
    }
}
