//! Loads micro-batches ahead of the model on `--num-workers` threads and
//! hands them out in order. The read-ahead is bounded, and the time the
//! consumer spends waiting for data is recorded so the training loop can
//! report it.

use super::sampler::Job;
use super::{BadRow, Batch, Dataset};
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One micro-batch of the epoch.
#[derive(Debug)]
pub struct MicroBatch {
    pub update: usize,
    pub micro: usize,
    /// `None` when this rank has no rows in this micro-batch (the end of an
    /// epoch, or every row skipped as bad): the trainer still takes part in
    /// the update's collectives.
    pub batch: Option<Batch>,
    /// Bad rows skipped in this micro-batch (`--skip-bad-rows`).
    pub skipped: usize,
}

struct State {
    next_job: usize,
    next_yield: usize,
    done: BTreeMap<usize, Result<MicroBatch>>,
    stop: bool,
}

struct Shared {
    dataset: Arc<Dataset>,
    jobs: Vec<Job>,
    skip_bad_rows: bool,
    /// How many jobs may be loaded beyond the one the consumer waits for.
    ahead: usize,
    state: Mutex<State>,
    ready: Condvar,
    space: Condvar,
}

pub struct Loader {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    waited: Duration,
    bad_rows: usize,
    reported: bool,
}

impl Loader {
    /// Starts loading `jobs` of `dataset`. With `num_workers == 0` each
    /// micro-batch is loaded by the caller when asked for.
    pub fn new(dataset: Arc<Dataset>, jobs: Vec<Job>, num_workers: usize, skip_bad_rows: bool) -> Loader {
        let shared = Arc::new(Shared {
            dataset,
            jobs,
            skip_bad_rows,
            ahead: 2 * num_workers.max(1),
            state: Mutex::new(State { next_job: 0, next_yield: 0, done: BTreeMap::new(), stop: false }),
            ready: Condvar::new(),
            space: Condvar::new(),
        });
        let workers = (0..num_workers)
            .map(|k| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("elfin-data-{k}"))
                    .spawn(move || worker(&shared))
                    .expect("spawning a data worker thread")
            })
            .collect();
        Loader { shared, workers, next: 0, waited: Duration::ZERO, bad_rows: 0, reported: false }
    }

    /// Number of micro-batches this loader yields.
    pub fn len(&self) -> usize {
        self.shared.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.jobs.is_empty()
    }

    /// Total time `next()` has blocked waiting for data.
    pub fn wait_time(&self) -> Duration {
        self.waited
    }

    /// Bad rows skipped so far.
    pub fn bad_rows(&self) -> usize {
        self.bad_rows
    }
}

fn load(shared: &Shared, job: &Job) -> Result<MicroBatch> {
    let mut samples = Vec::with_capacity(job.rows.len());
    let mut skipped = 0;
    for &i in &job.rows {
        match shared.dataset.get(i) {
            Ok(s) => samples.push(s),
            Err(e) if shared.skip_bad_rows && e.downcast_ref::<BadRow>().is_some() => skipped += 1,
            Err(e) => return Err(e),
        }
    }
    let batch = (!samples.is_empty()).then(|| shared.dataset.collate(&samples));
    Ok(MicroBatch { update: job.update, micro: job.micro, batch, skipped })
}

fn load_guarded(shared: &Shared, job: &Job) -> Result<MicroBatch> {
    catch_unwind(AssertUnwindSafe(|| load(shared, job))).unwrap_or_else(|_| {
        Err(anyhow!("a data worker panicked loading update {} micro-batch {}", job.update, job.micro))
    })
}

fn worker(shared: &Shared) {
    loop {
        let j = {
            let mut st = shared.state.lock().unwrap();
            while !st.stop && st.next_job < shared.jobs.len() && st.next_job > st.next_yield + shared.ahead {
                st = shared.space.wait(st).unwrap();
            }
            if st.stop || st.next_job >= shared.jobs.len() {
                return;
            }
            st.next_job += 1;
            st.next_job - 1
        };
        let result = load_guarded(shared, &shared.jobs[j]);
        shared.state.lock().unwrap().done.insert(j, result);
        shared.ready.notify_all();
    }
}

impl Iterator for Loader {
    type Item = Result<MicroBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.shared.jobs.len() {
            if !self.reported && self.bad_rows > 0 {
                eprintln!(
                    "elfin-train: skipped {} bad rows of {} this epoch (--skip-bad-rows)",
                    self.bad_rows,
                    self.shared.dataset.file().path().display()
                );
            }
            self.reported = true;
            return None;
        }
        let start = Instant::now();
        let result = if self.workers.is_empty() {
            load_guarded(&self.shared, &self.shared.jobs[self.next])
        } else {
            let mut st = self.shared.state.lock().unwrap();
            loop {
                if let Some(r) = st.done.remove(&self.next) {
                    st.next_yield += 1;
                    break r;
                }
                st = self.shared.ready.wait(st).unwrap();
            }
        };
        self.shared.space.notify_all();
        self.waited += start.elapsed();
        self.next += 1;
        if let Ok(mb) = &result {
            self.bad_rows += mb.skipped;
        }
        Some(result)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().stop = true;
        self.shared.space.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
