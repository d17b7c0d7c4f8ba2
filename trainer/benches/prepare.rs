//! Throughput of `elfin-train prepare` on 480×480 JPEGs, in images per
//! second, with 1 and 2 threads: the default (header read, original bytes,
//! base64, write), and for comparison `--verify-images` (full decode) and the
//! floor of reading and base64-encoding the same files in one thread.
//!
//!     cargo bench -p elfin-trainer --bench prepare
//!
//! The command runs in this process (what `elfin-train prepare` calls), so
//! the start of the binary (about a second, loading libtorch) is left out.

mod common;

use base64::Engine;
use clap::Parser;
use common::{best_ms, encode_jpeg, picture};
use elfin_trainer::prepare::PrepareTask;
use std::io::Write;

const IMAGES: usize = 1000;
const CAPTIONS_PER_IMAGE: usize = 1;

/// `elfin-train prepare`'s command line.
#[derive(Parser)]
struct Prepare {
    #[command(subcommand)]
    task: PrepareTask,
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images)?;
    let mut ann = std::io::BufWriter::new(std::fs::File::create(dir.path().join("captions.jsonl"))?);
    let mut bytes = 0;
    for i in 0..IMAGES {
        // A few distinct pictures: encoding them all would dominate the setup.
        let jpeg = encode_jpeg(&picture((i % 8) as u32));
        bytes += jpeg.len();
        std::fs::write(images.join(format!("{i}.jpg")), jpeg)?;
        for k in 0..CAPTIONS_PER_IMAGE {
            writeln!(
                ann,
                "{}",
                serde_json::json!({"image": format!("{i}.jpg"), "caption": format!("picture {i} caption {k}")})
            )?;
        }
    }
    ann.flush()?;
    drop(ann);
    println!(
        "prepare caption: {IMAGES} JPEGs of 480x480 ({:.0} KiB each), {CAPTIONS_PER_IMAGE} captions each, best of 3",
        bytes as f64 / IMAGES as f64 / 1024.0
    );
    let floor = best_ms(3, || {
        for i in 0..IMAGES {
            let b = std::fs::read(images.join(format!("{i}.jpg"))).unwrap();
            drop(base64::engine::general_purpose::STANDARD.encode(&b));
        }
    });
    let with_header = best_ms(3, || {
        for i in 0..IMAGES {
            let b = std::fs::read(images.join(format!("{i}.jpg"))).unwrap();
            elfin_trainer::data::image::dimensions(&b).unwrap();
            drop(base64::engine::general_purpose::STANDARD.encode(&b));
        }
    });
    println!("{:<44} {:>8} {:>10}", "setting", "threads", "images/s");
    println!("{:<44} {:>8} {:>10.0}", "read + base64 only (no rows written)", 1, IMAGES as f64 / (floor / 1e3));
    println!(
        "{:<44} {:>8} {:>10.0}",
        "read + header + base64 (no rows written)",
        1,
        IMAGES as f64 / (with_header / 1e3)
    );
    for (label, extra) in
        [("default (header only, original bytes)", None), ("--verify-images (full decode)", Some("--verify-images"))]
    {
        for threads in [1, 2] {
            let out = dir.path().join("out.tsv");
            let ms = best_ms(3, || {
                let mut args = vec!["prepare".to_string(), "caption".into(), "--annotations".into()];
                args.push(dir.path().join("captions.jsonl").display().to_string());
                args.extend([
                    "--images".into(),
                    images.display().to_string(),
                    "--out".into(),
                    out.display().to_string(),
                ]);
                args.push(format!("--threads={threads}"));
                args.extend(extra.map(String::from));
                let task = Prepare::parse_from(args).task;
                elfin_trainer::prepare::run(elfin_trainer::prepare::PrepareArgs { task }).expect("prepare runs");
            });
            println!("{label:<44} {threads:>8} {:>10.0}", IMAGES as f64 / (ms / 1e3));
        }
    }
    Ok(())
}
