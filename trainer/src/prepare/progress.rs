//! Progress of `prepare`: a bar with rate and ETA on a terminal, plain
//! periodic lines otherwise (logs, CI).

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a plain line is printed when stderr is not a terminal.
const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    start: Instant,
    bar: Option<ProgressBar>,
    last_line: Mutex<Instant>,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} images, {rate} images/s, ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}", s.per_sec());
                });
            bar.set_style(style);
            bar.set_message(label.to_string());
            bar
        });
        let start = Instant::now();
        Progress { label: label.into(), total, done: AtomicU64::new(0), start, bar, last_line: Mutex::new(start) }
    }

    /// One more image done (from any worker thread).
    pub fn inc(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
            return;
        }
        // Whoever holds the lock prints; the others go on working.
        if let Ok(mut last) = self.last_line.try_lock() {
            if last.elapsed() >= PLAIN_INTERVAL {
                *last = Instant::now();
                eprintln!("{}", self.line(done));
            }
        }
    }

    fn line(&self, done: u64) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let left = self.total - done.min(self.total);
        let eta = if rate > 0.0 && left > 0 { format!(", ETA {:.0}s", left as f64 / rate) } else { String::new() };
        let pct = if self.total > 0 { 100.0 * done as f64 / self.total as f64 } else { 100.0 };
        format!("{}: {done}/{} images ({pct:.0}%), {rate:.1} images/s{eta}", self.label, self.total)
    }

    /// Replaces the bar, if any, by the last line: done, rate and time taken.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let secs = self.start.elapsed().as_secs_f64();
        eprintln!("{} in {secs:.1}s", self.line(self.done.load(Ordering::Relaxed)));
    }
}
