//! The training loop's overhead: the time of a whole update (data, forward,
//! backward, loss, all-reduce, optimiser, logging) against forward + backward
//! alone, both measured by rank 0 of the same 2-rank run (`ups` and
//! `fwd_bwd_wall` of metrics.jsonl, over the second half of the run), and
//! the split of the rest (`comm_wall`, `optim_wall`).
//!
//!     cargo bench -p elfin-trainer --bench train_loop [-- --updates 40 --tiny-updates 8 --arch ofa_micro --trainer PATH --zero-sharding os]
//!
//! `--trainer PATH` runs another `elfin-train` build (say, of an older
//! commit), so that before/after figures can be taken alternately on a busy
//! machine; `--arch` runs one of the two cases; `--zero-sharding os` shards
//! the optimiser over the two ranks.

use std::path::Path;
use std::process::Command;

fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn value(args: &[String], name: &str, default: u64) -> u64 {
    flag(args, name).map_or(default, |v| v.parse().expect(name))
}

fn run(trainer: &str, dir: &Path, arch: &str, image: u32, batch: u32, updates: u64, extra: &[String]) {
    let data = dir.join(format!("data-{image}"));
    let synth = Command::new(trainer)
        .args([
            "synth",
            "--task",
            "caption",
            "--train",
            "200",
            "--val",
            "4",
            "--image-size",
            &image.to_string(),
            "--out",
        ])
        .arg(&data)
        .output()
        .expect("elfin-train synth");
    assert!(synth.status.success(), "{}", String::from_utf8_lossy(&synth.stderr));
    let save = dir.join(arch);
    let d = data.display();
    let out = Command::new("mpirun")
        .args(["-np", "2", "--oversubscribe", "-x", "OMP_NUM_THREADS=1", trainer, "train"])
        .arg(format!("--data={d}/train.tsv,{d}/val.tsv"))
        .arg(format!("--bpe-dir={d}/bpe"))
        .arg(format!("--save-dir={}", save.display()))
        .args(["--selected-cols=0,4,2", "--task=caption", "--code-dict-size=0", "--device=cpu", "--num-workers=1"])
        .arg(format!("--arch={arch}"))
        .arg(format!("--patch-image-size={image}"))
        .arg(format!("--batch-size={batch}"))
        .arg(format!("--max-update={updates}"))
        .arg(format!("--log-interval={}", updates / 2))
        .args(["--lr=1e-4", "--label-smoothing=0.1", "--clip-norm=1.0", "--weight-decay=0.01", "--max-epoch=100"])
        .args(["--scale-attn", "--scale-fc", "--scale-heads", "--disable-entangle", "--save-interval=0"])
        .args(extra)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(save.join("metrics.jsonl")).expect("metrics.jsonl");
    let last = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|r| r["scope"] == "interval")
        .expect("an interval record");
    let n = (updates - updates / 2) as f64;
    let update = 1.0 / last["ups"].as_f64().unwrap();
    let fwd_bwd = last["fwd_bwd_wall"].as_f64().unwrap() / n;
    let train = last["train_wall"].as_f64().unwrap() / n;
    // Builds before the split was logged (for `--trainer OLD`) lack these fields.
    let split = match (last["comm_wall"].as_f64(), last["optim_wall"].as_f64()) {
        (Some(comm), Some(optim)) => format!(
            "; of the update: all-reduces {:.1} ms (waits included), norm+Adam {:.1} ms, loss and the rest {:.1} ms",
            comm / n * 1e3,
            optim / n * 1e3,
            (train - fwd_bwd - (comm + optim) / n) * 1e3
        ),
        _ => String::new(),
    };
    println!(
        "result: {arch:<10} {image:>3}px batch {batch} x 2 ranks: update {:.1} ms, train step {:.1} ms, forward+backward {:.1} ms, overhead {:.1}% ({:.1}% outside the train step){split}",
        update * 1e3,
        train * 1e3,
        fwd_bwd * 1e3,
        100.0 * (update / fwd_bwd - 1.0),
        100.0 * (update / train - 1.0),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::env::temp_dir().join(format!("elfin-bench-loop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trainer = flag(&args, "--trainer").unwrap_or(env!("CARGO_BIN_EXE_elfin-train"));
    let only = flag(&args, "--arch");
    let extra: Vec<String> =
        flag(&args, "--zero-sharding").map(|z| format!("--zero-sharding={z}")).into_iter().collect();
    if only.is_none_or(|a| a == "ofa_micro") {
        run(trainer, &dir, "ofa_micro", 64, 8, value(&args, "--updates", 40), &extra);
    }
    if only.is_none_or(|a| a == "ofa_tiny") {
        run(trainer, &dir, "ofa_tiny", 256, 4, value(&args, "--tiny-updates", 8), &extra);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
