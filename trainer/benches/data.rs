//! Preprocessing throughput of the data loader: base64 + JPEG decode,
//! Pillow bicubic resize, normalisation and collation, in images per second,
//! with 1 and 2 worker threads.
//!
//!     cargo bench -p elfin-trainer --bench data
//!
//! Rows are 480×480 JPEG (q90, 4:2:0) images; the caption setting (P = 480)
//! decodes and normalises only, the grounding setting (P = 512) also resizes.

mod common;

use base64::Engine;
use common::{best_ms, encode_jpeg, picture};
use elfin_trainer::data::image::{decode_base64, decode_rgb, Normalize};
use elfin_trainer::data::loader::Loader;
use elfin_trainer::data::resize::resize_bicubic;
use elfin_trainer::data::synth::write_bpe;
use elfin_trainer::data::{DataArgs, Split, Task, TaskKind, ValidPlan};
use image::RgbImage;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

const ROWS: usize = 96;
const BATCH: usize = 8;

fn write_rows(dir: &Path) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("rows.tsv"))?);
    for i in 0..ROWS {
        let jpeg = encode_jpeg(&picture(i as u32));
        let b64 = base64::engine::general_purpose::STANDARD.encode(&jpeg);
        writeln!(f, "{i}\t{i}\ta picture\t10,20,300,400\t{b64}")?;
    }
    Ok(())
}

fn stages() {
    let img = picture(1);
    let jpeg = encode_jpeg(&img);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&jpeg);
    let norm = Normalize::new(false);
    let table = norm.table();
    let mut out = vec![0f32; 3 * 512 * 512];
    let resized = resize_bicubic(&img, 512, 512);
    println!("per-image stages, single thread (best of 20), 480x480 JPEG q90:");
    println!("  base64 decode        {:8.3} ms", best_ms(20, || drop(decode_base64(&b64).unwrap())));
    println!("  JPEG decode          {:8.3} ms", best_ms(20, || drop(decode_rgb(&jpeg).unwrap())));
    println!("  resize 480->512      {:8.3} ms", best_ms(20, || drop(resize_bicubic(&img, 512, 512))));
    println!("  resize 640x480->480  {:8.3} ms", {
        let wide = RgbImage::from_fn(640, 480, |x, y| *img.get_pixel(x * 3 / 4, y));
        best_ms(20, || drop(resize_bicubic(&wide, 480, 480)))
    });
    println!("  normalise 512x512    {:8.3} ms", best_ms(20, || norm.write_chw(&table, &resized, &mut out)));
}

fn main() -> anyhow::Result<()> {
    stages();
    let dir = tempfile::tempdir()?;
    write_rows(dir.path())?;
    write_bpe(&dir.path().join("bpe"), &[" what does the image describe? a picture".to_string()])?;
    println!("data loader throughput (best of 3), {ROWS} rows of 480x480 JPEG, batches of {BATCH}");
    println!("{:<34} {:>8} {:>12}", "setting", "workers", "images/s");
    for (label, task, patch) in [
        ("caption (decode, normalise), P=480", TaskKind::Caption, 480),
        ("refcoco (decode, resize), P=512", TaskKind::Refcoco, 512),
    ] {
        let args = DataArgs {
            data: Some(dir.path().join("rows.tsv").to_string_lossy().into_owned()),
            task,
            selected_cols: None,
            bpe_dir: Some(dir.path().join("bpe")),
            max_src_length: 80,
            max_tgt_length: 20,
            patch_image_size: patch,
            max_image_size: 512,
            num_bins: 1000,
            code_dict_size: 0,
            num_workers: 1,
            skip_bad_rows: false,
            imagenet_default_mean_and_std: false,
            index_cache_dir: None,
        };
        let ds = Arc::new(Task::new(&args)?.load(Split::Valid, 1)?);
        let jobs = ValidPlan::new(ds.len(), BATCH, 0, 1).jobs();
        let samples: Vec<_> = (0..BATCH).map(|i| ds.get(i).expect("row loads")).collect();
        println!(
            "{label}: one row to a sample {:.3} ms, collating {BATCH} samples {:.3} ms (best of 10)",
            best_ms(10, || drop(ds.get(0).unwrap())),
            best_ms(10, || drop(ds.collate(&samples)))
        );
        // Warm-up: page cache, allocator, BPE cache.
        Loader::new(Arc::clone(&ds), jobs[..2].to_vec(), 1, false).for_each(drop);
        for workers in [1, 2] {
            let ms = best_ms(3, || {
                for mb in Loader::new(Arc::clone(&ds), jobs.clone(), workers, false) {
                    mb.expect("rows load");
                }
            });
            let rate = ds.len() as f64 / (ms / 1e3);
            println!("{label:<34} {workers:>8} {rate:>12.1}");
        }
    }
    Ok(())
}
