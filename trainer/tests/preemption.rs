//! Preemption and restarts through the door a user uses: `elfin launch` of
//! a 2-rank CPU job, stopped by SIGTERM at random moments (to the launcher,
//! and to every process of the job at once, as Slurm and Kubernetes do),
//! and a rank killed with SIGKILL under `--max-restarts`. Every stop must
//! save a loadable `checkpoint_last` and exit 75, and the resumed run must
//! end bit-identical (every tensor, optimizer state included) to a run that
//! was never interrupted.

mod train_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use train_common::*;

const MAX_UPDATE: u64 = 200;

/// The jobs of this file take both cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The demo caption recipe on a tiny dataset (see `tiny_caption_preset`).
struct Setup {
    root: PathBuf,
    preset: PathBuf,
    reference: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let root = train_common::process_dir();
        let data = synth_caption(&root);
        let preset = tiny_caption_preset(&root, &data, MAX_UPDATE);
        let reference = root.join("reference");
        std::fs::create_dir(&reference).unwrap();
        let status = launch(&reference, &preset, &[]).status().unwrap();
        assert_eq!(status.code(), Some(0), "the uninterrupted run failed: {}", console(&reference));
        Setup { root, preset, reference: reference.join("run") }
    })
}

/// `elfin launch` of the preset on 2 CPU ranks in `dir`, its console appended to `dir/console`.
fn launch(dir: &Path, preset: &Path, extra: &[&str]) -> Command {
    let console = || std::fs::OpenOptions::new().create(true).append(true).open(dir.join("console")).unwrap();
    let mut cmd = Command::new(launcher());
    cmd.args(["launch", "--preset"])
        .arg(preset)
        .args(["--cpu", "--nproc-per-node", "2"])
        .args(extra)
        .current_dir(dir)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdin(Stdio::null())
        .stdout(console())
        .stderr(console());
    cmd
}

fn console(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("console")).unwrap_or_default()
}

fn assert_same_as_reference(run: &Path) {
    assert_same_checkpoint(
        &setup().reference.join("checkpoint_last.safetensors"),
        &run.join("checkpoint_last.safetensors"),
    );
}

/// The processes under `pid`, children before grandchildren.
fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, _) in parents.iter().filter(|(_, pp)| *pp == parent) {
            out.push(p);
            frontier.push(p);
        }
    }
    out
}

/// The elfin-train process of `rank` under the launcher `pid`, once it runs.
fn trainer_of_rank(pid: i32, rank: u32) -> Option<i32> {
    descendants(pid).into_iter().find(|p| {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
        let is_trainer = cmd.split(|&b| b == 0).next().is_some_and(|a| a.ends_with(b"elfin-train"));
        is_trainer && env.split(|&b| b == 0).any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes())
    })
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: signals a process this test started.
    unsafe { libc::kill(pid, sig) };
}

/// Once the job in `dir` has logged `updates` updates, SIGKILLs rank 1's trainer.
fn kill_rank_1_after(job: &Child, dir: &Path, updates: u64) {
    let start = Instant::now();
    while logged_updates(&dir.join("run")) < updates {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress: {}", console(dir));
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = trainer_of_rank(job.id() as i32, 1).expect("rank 1's elfin-train is running");
    kill(victim, libc::SIGKILL);
}

fn wait_exit(child: &mut Child, limit: Duration, dir: &Path) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("elfin launch still running {limit:?} after the stop:\n{}", console(dir));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tiny deterministic generator: the test's random moments repeat from run to run.
struct Moments(u64);

impl Moments {
    fn next(&mut self, max: Duration) -> Duration {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        max.mul_f64((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

#[test]
fn thirty_stops_at_random_moments_each_save_and_the_run_ends_as_if_never_stopped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let setup = setup();
    let dir = setup.root.join("stopped");
    std::fs::create_dir(&dir).unwrap();
    let run = dir.join("run");
    let mut moments = Moments(7);
    for stop in 0..30 {
        let mut job = launch(&dir, &setup.preset, &[]).spawn().unwrap();
        let before = logged_updates(&run);
        // Half the stops come at any moment from the start (start-up, loading,
        // the first update: a stop before the ranks start leaves nothing new to
        // save); the others once training is under way, the first one among them.
        let under_way = stop % 2 == 0;
        if under_way {
            let start = Instant::now();
            while logged_updates(&run) == before && start.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // A random moment, but within a few updates however fast the machine
        // is, so that thirty stops fit in the run.
        let (delay, most) = if under_way { (Duration::from_millis(400), 4) } else { (Duration::from_millis(3000), 2) };
        let (moment, start) = (moments.next(delay), Instant::now());
        while start.elapsed() < moment && logged_updates(&run) < before + most {
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = job.id() as i32;
        if stop < 20 {
            kill(pid, libc::SIGTERM);
        } else {
            for p in std::iter::once(pid).chain(descendants(pid)) {
                kill(p, libc::SIGTERM);
            }
        }
        let code = wait_exit(&mut job, Duration::from_secs(60), &dir);
        let last = run.join("checkpoint_last.safetensors");
        assert_eq!(code, Some(75), "stop {stop}: expected the preemption status; console:\n{}", console(&dir));
        assert!(!all_tensors(&last).is_empty(), "stop {stop}: {} is empty", last.display());
        assert!(!under_way || logged_updates(&run) > before, "stop {stop}: no progress was kept");
        assert!(logged_updates(&run) < MAX_UPDATE, "stop {stop}: the run ended before the last stop; raise MAX_UPDATE");
    }
    let status = launch(&dir, &setup.preset, &[]).status().unwrap();
    assert_eq!(status.code(), Some(0), "{}", console(&dir));
    assert_same_as_reference(&run);
}

/// Optimiser sharding (`--set zero_sharding=os`) trains the same bits as
/// every rank stepping everything, and the checkpoint a stop saves (the
/// moments gathered from both ranks) resumes either way: sharded until a
/// SIGTERM after update 60, then not until one after 130, then sharded again
/// to the end equals the reference.
#[test]
fn a_sharded_optimiser_trains_the_same_bits_and_resumes_with_or_without_sharding() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let setup = setup();
    let dir = setup.root.join("sharded");
    std::fs::create_dir(&dir).unwrap();
    let run = dir.join("run");
    for (stop_after, sharded) in [(Some(60), true), (Some(130), false), (None, true)] {
        let sets: &[&str] = if sharded { &["--set", "zero_sharding=os"] } else { &[] };
        let before = console(&dir).len();
        let mut job = launch(&dir, &setup.preset, sets).spawn().unwrap();
        let code = match stop_after {
            Some(updates) => {
                let start = Instant::now();
                while logged_updates(&run) < updates {
                    assert!(start.elapsed() < Duration::from_secs(120), "no progress: {}", console(&dir));
                    std::thread::sleep(Duration::from_millis(20));
                }
                kill(job.id() as i32, libc::SIGTERM);
                wait_exit(&mut job, Duration::from_secs(60), &dir)
            }
            None => wait_exit(&mut job, Duration::from_secs(300), &dir),
        };
        let text = console(&dir);
        assert_eq!(code, Some(if stop_after.is_some() { 75 } else { 0 }), "{text}");
        assert_eq!(
            text[before..].contains("optimiser sharded over 2 ranks"),
            sharded,
            "the console says when the optimiser is sharded:\n{}",
            &text[before..]
        );
    }
    assert_eq!(logged_updates(&run), MAX_UPDATE);
    assert_same_as_reference(&run);
}

#[test]
fn a_rank_killed_mid_run_restarts_the_job_from_checkpoint_last_and_ends_the_same() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let setup = setup();
    let dir = setup.root.join("killed");
    std::fs::create_dir(&dir).unwrap();
    let run = dir.join("run");
    let mut job = launch(&dir, &setup.preset, &["--max-restarts", "2", "--restart-delay", "0"]).spawn().unwrap();
    // After the checkpoint of update 10, before the next one.
    kill_rank_1_after(&job, &dir, 14);
    let code = wait_exit(&mut job, Duration::from_secs(300), &dir);
    let text = console(&dir);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("restart 1 of 2") && text.contains("rank 1 on ") && text.contains("was killed by SIGKILL"),
        "{text}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let restart = metrics.lines().find(|l| l.contains("\"restart\"")).expect("the restart is in metrics.jsonl");
    assert!(restart.contains("\"signal\":\"SIGKILL\"") && restart.contains("\"rank\":1"), "{restart}");
    assert_same_as_reference(&run);
}

#[test]
fn without_restarts_a_killed_rank_ends_the_job_within_30_s_naming_the_rank() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let setup = setup();
    let dir = setup.root.join("killed-once");
    std::fs::create_dir(&dir).unwrap();
    let mut job = launch(&dir, &setup.preset, &["--max-restarts", "0"]).spawn().unwrap();
    kill_rank_1_after(&job, &dir, 3);
    let killed = Instant::now();
    let code = wait_exit(&mut job, Duration::from_secs(30), &dir);
    assert!(killed.elapsed() < Duration::from_secs(30));
    let text = console(&dir);
    assert_eq!(code, Some(137), "{text}");
    assert!(text.contains("elfin: rank 1 on ") && text.contains("was killed by SIGKILL; its log: "), "{text}");
}
