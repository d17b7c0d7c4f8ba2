//! Helpers shared by the training-loop tests: a small synthetic caption
//! dataset and the `elfin-train train` command line of a tiny run.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const TRAINER: &str = env!("CARGO_BIN_EXE_elfin-train");

/// Writes a synthetic caption dataset (40 images × 5 captions, 8 validation images) under `dir`.
pub fn synth_caption(dir: &Path) -> PathBuf {
    let out = dir.join("caption");
    let status = Command::new(TRAINER)
        .args(["synth", "--task", "caption", "--train", "40", "--val", "8", "--image-size", "32", "--out"])
        .arg(&out)
        .output()
        .expect("elfin-train synth runs");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    out
}

/// `train` arguments of a tiny ofa_micro run on `data`, saving to `save_dir`.
/// The LR schedule is fixed (no warmup ratio), so `--max-update` only says when to stop.
pub fn train_args(data: &Path, save_dir: &Path, extra: &[&str]) -> Vec<String> {
    let d = data.display();
    let mut args: Vec<String> = [
        "train".to_string(),
        format!("--data={d}/train.tsv,{d}/val.tsv"),
        format!("--bpe-dir={d}/bpe"),
        format!("--save-dir={}", save_dir.display()),
    ]
    .into_iter()
    .collect();
    let fixed = [
        "--selected-cols=0,4,2",
        "--task=caption",
        "--arch=ofa_micro",
        "--patch-image-size=32",
        "--encoder-normalize-before",
        "--decoder-normalize-before",
        "--share-all-embeddings",
        "--layernorm-embedding",
        "--patch-layernorm-embedding",
        "--code-layernorm-embedding",
        "--add-type-embedding",
        "--scale-attn",
        "--scale-fc",
        "--scale-heads",
        "--disable-entangle",
        "--label-smoothing=0.1",
        "--lr=1e-3",
        "--warmup-updates=2",
        "--total-num-update=20",
        "--weight-decay=0.01",
        "--clip-norm=1.0",
        "--max-epoch=5",
        "--log-interval=1",
        "--num-workers=1",
        "--device=cpu",
        "--save-interval=0",
    ];
    // A flag given in `extra` replaces its default here.
    let given = |flag: &str| extra.iter().any(|e| e.split('=').next() == flag.split('=').next());
    args.extend(fixed.iter().filter(|f| !given(f)).map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn run_trainer(args: &[String]) -> Output {
    let out = Command::new(TRAINER).args(args).env("OMP_NUM_THREADS", "1").output().expect("elfin-train runs");
    assert!(
        out.status.success(),
        "elfin-train {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `model.*` tensors of a checkpoint, as raw little-endian bytes by name.
pub fn model_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(name, t)| name.starts_with("model.") && t.dtype() == safetensors::Dtype::F32)
        .map(|(name, t)| {
            let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (name, v)
        })
        .collect()
}

/// `train` records of `metrics.jsonl` logged per update (`--log-interval=1`).
pub fn train_records(save_dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(save_dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train" && v["scope"] == "interval")
        .collect()
}

/// Largest absolute difference between two checkpoints' model tensors.
pub fn max_param_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (model_tensors(a), model_tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter().map(|(k, x)| x.iter().zip(&b[k]).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max)).fold(0f32, f32::max)
}

/// Every tensor of a checkpoint (model, optimizer state, loss scaler) as raw bytes.
pub fn all_tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not a loadable checkpoint: {e}", path.display()));
    st.tensors().into_iter().map(|(name, t)| (name, t.data().to_vec())).collect()
}

/// Asserts that two checkpoints hold the same tensors, bit for bit, optimizer state included.
pub fn assert_same_checkpoint(reference: &Path, other: &Path) {
    let (a, b) = (all_tensors(reference), all_tensors(other));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(a.keys().any(|k| k.starts_with("optimizer.")), "the optimizer state is compared too");
    let differ: Vec<&String> = a.keys().filter(|k| a[*k] != b[*k]).collect();
    assert!(
        differ.is_empty(),
        "{} tensors of {} differ from {}, e.g. {:?}",
        differ.len(),
        other.display(),
        reference.display(),
        &differ[..differ.len().min(5)]
    );
}

/// The last update a run logged to its metrics.jsonl (0 before the first).
pub fn logged_updates(run: &Path) -> u64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["num_updates"].as_u64())
        .max()
        .unwrap_or(0)
}

/// The `elfin` launcher built next to the trainer.
pub fn launcher() -> PathBuf {
    let path = Path::new(TRAINER).with_file_name("elfin");
    assert!(path.exists(), "{} is missing: build the workspace first (make build)", path.display());
    path
}

/// A preset file in `root` for the demo caption recipe on the tiny dataset
/// `data`: 32 px, a checkpoint every 10 updates (with its validation, greedy
/// and short), dropout and drop path on.
pub fn tiny_caption_preset(root: &Path, data: &Path, max_update: u64) -> PathBuf {
    let d = data.display();
    let preset = root.join("tiny_caption.sh");
    std::fs::write(
        &preset,
        format!(
            "# the demo caption recipe, tiny\nsource demo_caption_el.sh\nsynth_task=\n\
             data={d}/train.tsv,{d}/val.tsv\nbpe_dir={d}/bpe\npatch_image_size=32\nmax_update={max_update}\n\
             log_interval=1\nsave_interval_updates=10\nvalidate_interval_updates=0\n\
             eval_args='{{\"beam\":1,\"max_len_b\":4}}'\nsave_path=./run\nlog_dir=./logs\n"
        ),
    )
    .unwrap();
    preset
}

/// A fresh directory for data that the tests of one process share through a
/// `static`. A `static` is never dropped, so a `tempfile::TempDir` held there
/// would stay behind after every run (gigabytes of checkpoints, until the
/// disk fills); this one is removed when the process exits, passed or not.
pub fn process_dir() -> PathBuf {
    static DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    extern "C" fn remove_all() {
        for dir in DIRS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let dir = tempfile::tempdir().expect("a temporary directory").keep();
    let mut dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if dirs.is_empty() {
        // SAFETY: registers a plain function without arguments, once.
        unsafe { libc::atexit(remove_all) };
    }
    dirs.push(dir.clone());
    dir
}
