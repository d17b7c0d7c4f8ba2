//! Ending the whole job when one rank fails, instead of leaving the other
//! ranks blocked in a collective forever.
//!
//! - [`abort_job`]: print the reason with this rank's identity and call
//!   `MPI_Abort` on the world, which makes the launcher (mpirun, srun) kill
//!   every rank and exit non-zero.
//! - [`install_panic_hook`]: a panic on any thread of any rank aborts the job.
//! - [`Watchdog`]: a thread that aborts the job when one collective runs past
//!   `--collective-timeout`, naming the operation.

use mpi::ffi;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

static RANK_LABEL: OnceLock<String> = OnceLock::new();

/// Records how this process names itself in fatal messages, e.g.
/// `rank 1/4 (host node7)`. Set once by `World::init`.
pub(crate) fn set_rank_label(label: String) {
    let _ = RANK_LABEL.set(label);
}

fn rank_label() -> &'static str {
    RANK_LABEL.get().map(String::as_str).unwrap_or("rank ?")
}

fn mpi_running() -> bool {
    mpi::environment::is_initialized() && !mpi::environment::is_finalized()
}

/// Prints `reason` (prefixed with this rank) to stderr and ends the whole
/// job: `MPI_Abort` on the world communicator when MPI is running, a plain
/// exit with status 1 otherwise.
pub fn abort_job(reason: &str) -> ! {
    eprintln!("elfin-train {}: {reason}", rank_label());
    eprintln!("elfin-train {}: aborting the whole job (MPI_Abort)", rank_label());
    if mpi_running() {
        // SAFETY: MPI is initialised and not finalised; MPI_Abort does not return.
        unsafe {
            ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, 1);
        }
    }
    std::process::exit(1)
}

/// Makes a panic on any thread abort the whole job after the usual panic
/// message has been printed (a panicking rank would otherwise leave its peers
/// waiting in a collective). Installed by `World::init` when there is more
/// than one rank.
pub fn install_panic_hook() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            abort_job(&format!("panicked{place}: {message}"));
        }));
    });
}

/// What the watchdog thread watches: the collective in flight, if any.
struct Watched {
    current: Option<(&'static str, usize, Instant)>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<Watched>,
    wake: Condvar,
    timeout: Duration,
}

/// Aborts the job when one collective takes longer than the timeout. One
/// per process group; collectives mark themselves with [`Watchdog::watch`].
pub struct Watchdog {
    shared: Arc<Shared>,
}

/// Marks a collective in flight until dropped.
pub struct WatchGuard<'a> {
    shared: &'a Shared,
}

impl Watchdog {
    pub fn new(timeout: Duration) -> Watchdog {
        let shared = Arc::new(Shared {
            state: Mutex::new(Watched { current: None, shutdown: false }),
            wake: Condvar::new(),
            timeout,
        });
        let watched = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("elfin-collective-watchdog".into())
            .spawn(move || watch_loop(&watched))
            .expect("spawning the collective watchdog thread");
        Watchdog { shared }
    }

    /// Marks the collective `op` over `elems` elements as in flight until the
    /// guard is dropped.
    pub fn watch(&self, op: &'static str, elems: usize) -> WatchGuard<'_> {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.current = Some((op, elems, Instant::now()));
        self.shared.wake.notify_one();
        WatchGuard { shared: &self.shared }
    }
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).current = None;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).shutdown = true;
        self.shared.wake.notify_one();
    }
}

fn watch_loop(shared: &Shared) {
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if state.shutdown {
            return;
        }
        state = match state.current {
            None => shared.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
            Some((op, elems, started)) => {
                let elapsed = started.elapsed();
                if elapsed >= shared.timeout {
                    abort_job(&format!(
                        "collective `{op}` ({elems} elements) did not complete within {:.0} s (--collective-timeout); \
                         another rank is probably hung, dead or not calling it",
                        shared.timeout.as_secs_f64()
                    ));
                }
                shared.wake.wait_timeout(state, shared.timeout - elapsed).unwrap_or_else(|p| p.into_inner()).0
            }
        };
    }
}
