//! Checkpoint files: a bit-exact round trip, atomicity under a real
//! SIGKILL in the middle of a save, and the files a sequence of saves leaves.

use clap::Parser;
use elfin_trainer::checkpoint::{
    is_elfin_checkpoint, load_checkpoint, save_checkpoint, CheckpointArgs, CheckpointSaver, CheckpointState, Progress,
    RngState, LAST,
};
use elfin_trainer::optim::adam::Moments;
use elfin_trainer::optim::{AdamState, LossScalerState};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

fn bytes(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let mut out = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut out, t.numel());
    out
}

fn state(num_updates: u64, model: Vec<(String, Tensor)>) -> CheckpointState {
    CheckpointState {
        model,
        optimizer: None,
        loss_scaler: None,
        progress: Progress { epoch: 1, num_updates, ..Progress::default() },
        rng: RngState::default(),
        config: serde_json::Value::Null,
    }
}

#[test]
fn round_trip_is_bit_exact_with_all_metadata() {
    tch::manual_seed(3);
    let weird = Tensor::from_slice(&[f32::NAN, -0.0, f32::INFINITY, 1e-45, 3.5]);
    let model = vec![
        ("encoder.layers.0.fc1.weight".to_string(), Tensor::randn([7, 5], (Kind::Float, tch::Device::Cpu))),
        ("encoder.odd".to_string(), weird),
        ("half".to_string(), Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu)).to_kind(Kind::Half)),
        ("bf".to_string(), Tensor::randn([4], (Kind::Float, tch::Device::Cpu)).to_kind(Kind::BFloat16)),
        ("encoder.token_rp_bucket".to_string(), Tensor::arange(12, (Kind::Int64, tch::Device::Cpu)).view([3, 4])),
        ("mask".to_string(), Tensor::from_slice(&[true, false, true])),
        ("scalar".to_string(), Tensor::from(2.5f32)),
        ("transposed".to_string(), Tensor::randn([3, 2], (Kind::Float, tch::Device::Cpu)).tr()),
    ];
    let mut moments = BTreeMap::new();
    moments.insert(
        "encoder.layers.0.fc1.weight".to_string(),
        Moments {
            exp_avg: Tensor::randn([7, 5], (Kind::Float, tch::Device::Cpu)),
            exp_avg_sq: Tensor::rand([7, 5], (Kind::Float, tch::Device::Cpu)),
        },
    );
    let scaler = LossScalerState {
        scale: 64.0,
        scale_window: 512,
        tolerance: 0.0,
        threshold: None,
        min_scale: 1e-4,
        iter: 1234,
        last_overflow_iter: 1000,
        last_rescale_iter: 1000,
        overflows_since_rescale: 0,
    };
    let progress = Progress {
        epoch: 3,
        num_updates: 1500,
        iterations_in_epoch: 77,
        end_of_epoch: false,
        best: Some(1.403),
        metric: Some(1.398),
        previous_training_time: 4321.5,
    };
    let rng = RngState { seed: 1, counters: BTreeMap::from([("shuffle_epoch".to_string(), 3)]) };
    let config =
        serde_json::json!({"lr": 1e-5, "arch": "ofa_micro", "adam_betas": [0.9, 0.999], "nested": {"x": [1, 2]}});
    let saved = CheckpointState {
        model,
        optimizer: Some(AdamState { step: 1500, moments }),
        loss_scaler: Some(scaler.clone()),
        progress: progress.clone(),
        rng: rng.clone(),
        config: config.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LAST);
    save_checkpoint(&path, &saved).unwrap();
    let loaded = load_checkpoint(&path).unwrap();

    let mut expected: Vec<_> = saved.model.iter().map(|(n, t)| (n.clone(), t.kind(), t.size(), bytes(t))).collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let got: Vec<_> = loaded.model.iter().map(|(n, t)| (n.clone(), t.kind(), t.size(), bytes(t))).collect();
    assert_eq!(got, expected);
    let opt = loaded.optimizer.expect("optimizer state restored");
    assert_eq!(opt.step, 1500);
    let (want, have) = (&saved.optimizer.as_ref().unwrap().moments, &opt.moments);
    assert_eq!(have.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (n, m) in want {
        assert_eq!(bytes(&have[n].exp_avg), bytes(&m.exp_avg));
        assert_eq!(bytes(&have[n].exp_avg_sq), bytes(&m.exp_avg_sq));
    }
    assert_eq!(loaded.loss_scaler, Some(scaler));
    assert_eq!(loaded.progress, progress);
    assert_eq!(loaded.rng, rng);
    assert_eq!(loaded.config, config);
    assert_eq!(loaded.progress.resume_position(), (3, 77));

    // The file is plain safetensors: Python reads it, names prefixed as documented.
    let names = Tensor::read_safetensors(&path).unwrap().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert!(names.contains(&"model.encoder.layers.0.fc1.weight".to_string()));
    assert!(names.contains(&"optimizer.exp_avg.encoder.layers.0.fc1.weight".to_string()));
    assert!(names.contains(&"optimizer.exp_avg_sq.encoder.layers.0.fc1.weight".to_string()));
    assert!(is_elfin_checkpoint(&path).unwrap());
    // A damaged (truncated) file is refused with a message, not misread.
    let truncated = dir.path().join("truncated.safetensors");
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&truncated, &full[..full.len() - 1]).unwrap();
    let err = format!("{:#}", load_checkpoint(&truncated).err().expect("truncated file refused"));
    assert!(err.contains("truncated"), "{err}");
    std::fs::remove_file(&truncated).unwrap();
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from(LAST)]);
}

#[test]
fn weights_only_files_load_as_model_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pretrained.safetensors");
    let w = Tensor::from_slice(&[1.0f32, 2.0]);
    Tensor::write_safetensors(&[("decoder.embed_tokens.weight", &w)], &path).unwrap();
    let loaded = load_checkpoint(&path).unwrap();
    assert_eq!(loaded.model.len(), 1);
    assert_eq!(loaded.model[0].0, "decoder.embed_tokens.weight");
    assert!(loaded.optimizer.is_none() && loaded.loss_scaler.is_none());
    assert!(!is_elfin_checkpoint(&path).unwrap());
    assert_eq!(loaded.progress, Progress::default());

    std::fs::write(&path, b"not a checkpoint").unwrap();
    let err = load_checkpoint(&path).err().expect("garbage is rejected");
    assert!(format!("{err:#}").contains("pretrained.safetensors"), "{err:#}");
}

const KILL_CHILD: &str = "ELFIN_CHECKPOINT_KILL_CHILD";

/// The child: saves a small checkpoint, announces it, then starts saving a
/// large one over it (the parent kills it during that write).
fn kill_child(dir: &Path) {
    let path = dir.join(LAST);
    let small = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0, 3.0]))];
    save_checkpoint(&path, &state(1, small)).unwrap();
    println!("first checkpoint saved");
    let big: Vec<(String, Tensor)> =
        (0..32).map(|i| (format!("w{i:02}"), Tensor::ones([2 << 20], (Kind::Float, tch::Device::Cpu)))).collect();
    save_checkpoint(&path, &state(2, big)).unwrap();
    println!("second checkpoint saved");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_save_killed_midway_leaves_the_previous_checkpoint_loadable() {
    if let Some(dir) = std::env::var_os(KILL_CHILD) {
        return kill_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "a_save_killed_midway_leaves_the_previous_checkpoint_loadable",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL_CHILD, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("first checkpoint saved")));
    let tmp = dir.path().join(format!(".{LAST}.tmp-{}", child.id()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed_at = None;
    while Instant::now() < deadline {
        if let Ok(meta) = std::fs::metadata(&tmp) {
            if meta.len() > 1 << 20 {
                child.kill().unwrap();
                killed_at = Some(meta.len());
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    child.wait().unwrap();
    let written = killed_at.expect("the child's second save was never seen in progress");
    let full = 32 * (2u64 << 20) * 4;
    assert!(written < full, "killed after {written} of {full} bytes");
    assert!(tmp.exists(), "the partial write stays in its temporary file");

    let survivor = load_checkpoint(&dir.path().join(LAST)).unwrap();
    assert_eq!(survivor.progress.num_updates, 1);
    assert_eq!(survivor.model.len(), 1);

    // The next save of the same file cleans up the dead writer's leftovers.
    save_checkpoint(&dir.path().join(LAST), &state(3, vec![("w".into(), Tensor::from(1.0f32))])).unwrap();
    assert!(!tmp.exists());
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    checkpoint: CheckpointArgs,
}

#[test]
fn saver_writes_last_best_interval_and_keeps_one_best() {
    let dir = tempfile::tempdir().unwrap();
    let save_dir = dir.path().to_str().unwrap();
    let args = Cli::try_parse_from([
        "t",
        "--save-dir",
        save_dir,
        "--save-interval-updates",
        "500",
        "--no-epoch-checkpoints",
        "--keep-best-checkpoints",
        "1",
        "--best-checkpoint-metric",
        "cider",
        "--maximize-best-checkpoint-metric",
    ])
    .unwrap()
    .checkpoint;
    let mut saver = CheckpointSaver::new(args, None);
    let mut s = state(500, vec![("w".into(), Tensor::from(1.0f32))]);
    saver.save(&mut s, Some(1.25)).unwrap();
    s.progress.num_updates = 1000;
    saver.save(&mut s, Some(1.1)).unwrap();
    s.progress.num_updates = 1200;
    s.progress.end_of_epoch = true;
    saver.save(&mut s, Some(1.403)).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "checkpoint.best_cider_1.4030.safetensors",
            "checkpoint_1_1000.safetensors",
            "checkpoint_1_500.safetensors",
            "checkpoint_best.safetensors",
            "checkpoint_last.safetensors",
        ]
    );
    assert_eq!(saver.best(), Some(1.403));
    let best = load_checkpoint(&dir.path().join("checkpoint_best.safetensors")).unwrap();
    assert_eq!((best.progress.num_updates, best.progress.best), (1200, Some(1.403)));
    let interval = load_checkpoint(&dir.path().join("checkpoint_1_1000.safetensors")).unwrap();
    assert_eq!((interval.progress.best, interval.progress.metric), (Some(1.25), Some(1.1)));
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/gpu-check.sh"]
fn cuda_tensors_save_and_load_bit_exact() {
    assert!(tch::Cuda::is_available(), "no CUDA device visible to libtorch");
    let cuda = tch::Device::Cuda(0);
    let model = vec![
        ("w".to_string(), Tensor::randn([257, 33], (Kind::Float, cuda))),
        ("h".to_string(), Tensor::randn([64], (Kind::Float, cuda)).to_kind(Kind::Half)),
        ("t".to_string(), Tensor::randn([8, 4], (Kind::Float, cuda)).tr()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LAST);
    save_checkpoint(&path, &state(7, model.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect())).unwrap();
    let loaded = load_checkpoint(&path).unwrap();
    for (name, t) in &model {
        let (_, got) = loaded.model.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(bytes(got), bytes(&t.to_device(tch::Device::Cpu)), "{name}");
    }
}
