//! Multi-node runs for real, on one machine: `scripts/local-cluster.sh`
//! makes 2 nodes (network namespaces, each with its own hostname, address
//! and TMPDIR, talking TCP over veth links), and `elfin launch --hostfile`
//! runs the demo caption recipe across them through Open MPI's rsh agent.
//! Needs root (CI runs as root): without namespaces these tests fail, they do not skip.

mod train_common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use train_common::*;

const CLUSTER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/local-cluster.sh");

/// The jobs of this file take every core: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The tiny data and the demo caption recipe on it, 32 px. Dropout and drop
/// path are off: their masks depend on which rank draws them, so with them
/// no two layouts of ranks train the same model.
struct Setup {
    root: PathBuf,
    preset: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let root = train_common::process_dir();
        let d = synth_caption(&root);
        let d = d.display();
        let preset = root.join("tiny_caption.sh");
        std::fs::write(
            &preset,
            format!(
                "# the demo caption recipe, tiny\nsource demo_caption_el.sh\nsynth_task=\n\
                 data={d}/train.tsv,{d}/val.tsv\nbpe_dir={d}/bpe\npatch_image_size=32\nmax_update=4\n\
                 dropout=0.0\nencoder_drop_path_rate=0.0\ndecoder_drop_path_rate=0.0\n\
                 log_interval=1\nsave_interval_updates=0\nvalidate_interval_updates=0\n\
                 eval_args='{{\"beam\":1,\"max_len_b\":4}}'\nsave_path=./run\nlog_dir=./logs\n"
            ),
        )
        .unwrap();
        Setup { root, preset }
    })
}

/// A cluster of 2 nodes in `dir`, taken down when dropped (a failed assertion included).
struct Cluster {
    dir: PathBuf,
}

fn cluster_script(args: &[&str]) -> std::process::Output {
    Command::new(CLUSTER_SCRIPT).args(args).output().expect("running scripts/local-cluster.sh")
}

impl Cluster {
    fn up(dir: &Path, slots: usize) -> Cluster {
        let d = dir.to_str().unwrap();
        let out = cluster_script(&["up", d, "--nodes", "2", "--slots", &slots.to_string()]);
        let cluster = Cluster { dir: dir.to_path_buf() };
        assert!(
            out.status.success(),
            "these tests need 2 namespaced nodes (run as root, with network namespaces):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    /// `elfin launch --hostfile` of the preset on node1, its console in `dir/console`.
    fn launch(&self, dir: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(CLUSTER_SCRIPT);
        cmd.arg("run").arg(&self.dir).arg("--").arg(launcher());
        cmd.args(["launch", "--preset"])
            .arg(&setup().preset)
            .arg("--cpu")
            .arg("--hostfile")
            .arg(self.dir.join("hostfile"));
        cmd.args(extra);
        in_dir(cmd, dir)
    }

    fn kill(&self, node: &str) {
        let out = cluster_script(&["kill", self.dir.to_str().unwrap(), node]);
        assert!(out.status.success(), "kill {node}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = cluster_script(&["down", self.dir.to_str().unwrap()]);
        if !out.status.success() && !std::thread::panicking() {
            panic!("local-cluster.sh down failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// `elfin launch` of the preset on this one node, `ranks` CPU ranks.
fn launch_here(dir: &Path, ranks: usize, extra: &[&str]) -> Command {
    let mut cmd = Command::new(launcher());
    cmd.args(["launch", "--preset"]).arg(&setup().preset).args(["--cpu", "--nproc-per-node", &ranks.to_string()]);
    cmd.args(extra).env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    in_dir(cmd, dir)
}

fn in_dir(mut cmd: Command, dir: &Path) -> Command {
    std::fs::create_dir_all(dir).unwrap();
    let console = || std::fs::OpenOptions::new().create(true).append(true).open(dir.join("console")).unwrap();
    cmd.current_dir(dir).env("OMP_NUM_THREADS", "1").stdin(Stdio::null()).stdout(console()).stderr(console());
    cmd
}

fn console(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("console")).unwrap_or_default()
}

fn run_ok(mut cmd: Command, dir: &Path) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{status}: {}", console(dir));
}

/// Largest difference of the trained parameters, the BatchNorm running
/// statistics aside (each rank's come from its own batches; rank 0's are saved).
fn param_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (
        model_tensors(&a.join("run/checkpoint_last.safetensors")),
        model_tensors(&b.join("run/checkpoint_last.safetensors")),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .filter(|(name, _)| !name.contains(".running_"))
        .map(|(k, x)| x.iter().zip(&b[k]).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max))
        .fold(0f32, f32::max)
}

fn valid_record(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    let last = text.lines().rev().find(|l| l.contains("\"kind\":\"valid\""));
    serde_json::from_str(last.unwrap_or_else(|| panic!("no validation in {}", dir.display()))).unwrap()
}

fn predictions(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("run/predictions.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["prediction"].to_string()).collect()
}

fn logged_updates(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["num_updates"].as_u64())
        .max()
        .unwrap_or(0)
}

fn wait_for_updates(dir: &Path, n: u64) {
    let start = Instant::now();
    while logged_updates(dir) < n {
        assert!(start.elapsed() < Duration::from_secs(180), "no progress to update {n}: {}", console(dir));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut std::process::Child, limit: Duration, dir: &Path) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("elfin launch still running {limit:?} on:\n{}", console(dir));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every checkpoint file of a run loads, every tensor whole.
fn assert_checkpoints_intact(dir: &Path) {
    let mut found = 0;
    for entry in std::fs::read_dir(dir.join("run")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .unwrap_or_else(|e| panic!("{} is not a loadable checkpoint: {e}", path.display()));
            assert!(st.tensors().iter().any(|(n, _)| n.starts_with("model.")), "{}", path.display());
            found += 1;
        }
    }
    assert!(found > 0, "no checkpoint in {}", dir.display());
}

/// Processes whose command line mentions `dir` (the job's wrappers and mpirun name its log dir).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap().as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            cmd.windows(needle.len()).any(|w| w == needle).then(|| String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

#[test]
fn two_nodes_train_the_same_model_as_one_node() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = setup().root.join("same-model");
    {
        let cluster = Cluster::up(&root.join("cluster1"), 1);
        let (one, two) = (root.join("1x1-uf2"), root.join("2x1-uf1"));
        run_ok(launch_here(&one, 1, &["--set", "update_freq=2"]), &one);
        run_ok(cluster.launch(&two, &[]), &two);
        let text = console(&two);
        assert!(text.contains("node1 (1 ranks), node2 (1 ranks)") && text.contains("rank 0 of 2"), "{text}");
        assert!(two.join("logs/rank-1-node2.log").exists(), "rank 1 ran on node2 and its log says so");
        let diff = param_diff(&one, &two);
        assert!(diff < 1e-4, "2 nodes x 1 rank and 1 rank x update-freq 2 differ by {diff}");
    }
    let cluster = Cluster::up(&root.join("cluster2"), 2);
    let (one, two) = (root.join("1x4"), root.join("2x2"));
    run_ok(launch_here(&one, 4, &[]), &one);
    run_ok(cluster.launch(&two, &[]), &two);
    for rank in ["rank-0-node1", "rank-1-node1", "rank-2-node2", "rank-3-node2"] {
        assert!(two.join(format!("logs/{rank}.log")).exists(), "{rank}.log: ranks 0, 1 on node1 and 2, 3 on node2");
    }
    let diff = param_diff(&one, &two);
    assert!(diff < 1e-4, "2 nodes x 2 ranks and 1 node x 4 ranks differ by {diff}");
    let (a, b) = (valid_record(&one), valid_record(&two));
    assert_eq!(a["cider"], b["cider"], "the validation score: {a} vs {b}");
    assert_eq!(a["ntokens"], b["ntokens"], "the same validation rows: {a} vs {b}");
    // BatchNorm statistics aside, the same model: the loss differs only by them.
    let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
    assert!((la - lb).abs() < 1e-2, "validation loss {la} vs {lb}");
    assert_eq!(predictions(&one), predictions(&two), "the same validation hypotheses");
}

#[test]
fn killing_node2_ends_the_job_within_30_s_naming_node2_and_its_ranks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = setup().root.join("node-lost");
    let cluster = Cluster::up(&root.join("cluster"), 2);
    let dir = root.join("job");
    let extra = ["--set", "max_update=1000", "--set", "save_interval_updates=2"];
    let mut job = cluster.launch(&dir, &extra).spawn().unwrap();
    wait_for_updates(&dir, 3);
    cluster.kill("node2");
    let killed = Instant::now();
    let status = wait_exit(&mut job, Duration::from_secs(30), &dir);
    let took = killed.elapsed();
    let text = console(&dir);
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(!status.success(), "{status}: {text}");
    assert!(text.contains("elfin: lost ranks 2, 3 on node2"), "{text}");
    assert!(!text.contains("on node1:"), "node1's ranks were not lost: {text}");
    std::thread::sleep(Duration::from_secs(1));
    let left = processes_under(&root);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    assert_checkpoints_intact(&dir);
    eprintln!("the job ended {took:?} after node2 was killed");
}

#[test]
fn sigterm_to_the_launcher_saves_checkpoint_last_and_exits_75_on_both_nodes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = setup().root.join("stopped");
    let cluster = Cluster::up(&root.join("cluster"), 1);
    let dir = root.join("job");
    let mut job = cluster.launch(&dir, &["--set", "max_update=1000"]).spawn().unwrap();
    wait_for_updates(&dir, 3);
    // local-cluster.sh run execs into the launcher: the child is `elfin launch` on node1.
    let pid = job.id();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(launcher().to_str().unwrap().as_bytes()), "{}", String::from_utf8_lossy(&cmdline));
    // SAFETY: signals the process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = wait_exit(&mut job, Duration::from_secs(60), &dir);
    let text = console(&dir);
    assert_eq!(status.code(), Some(75), "{text}");
    assert!(text.contains("every rank saved"), "{text}");
    let remote = std::fs::read_to_string(dir.join("logs/rank-1-node2.log")).unwrap();
    assert!(remote.contains("after saving"), "rank 1 on node2 stopped at the same update: {remote}");
    assert_checkpoints_intact(&dir);
    assert!(logged_updates(&dir) < 1000, "stopped before the end");
}
