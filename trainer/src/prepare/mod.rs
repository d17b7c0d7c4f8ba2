//! `elfin-train prepare`: one's own annotations and image folders to the
//! reference's TSV files, the inverse of `data/` (see docs/data.md, "Your own dataset").
//!
//! The annotation format is told apart by content: COCO captions, Karpathy's
//! `dataset_coco.json` or JSON Lines for captions; the refer toolkit's
//! pickles (through `scripts/refer_to_json.py`) or their JSON, or JSON Lines
//! for grounding. Images keep their bytes unless `--reencode` is given.

pub mod caption;
pub mod image_file;
mod json_input;
pub mod output;
pub mod problem;
mod progress;
pub mod refcoco;
pub mod rows;

use self::image_file::{ImageOptions, Reencode};
use self::output::{sibling, PendingFile};
use self::problem::Checker;
use self::rows::{write_rows, Entry, ImageTable, WriteOptions};
use anyhow::{bail, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PrepareArgs {
    #[command(subcommand)]
    pub task: PrepareTask,
}

#[derive(clap::Subcommand, Debug)]
pub enum PrepareTask {
    /// Captions (COCO captions_*.json, Karpathy dataset_coco.json, or JSON Lines of image and caption)
    /// to the caption TSV, its COCO-format reference JSON and its CIDEr document frequencies.
    Caption(caption::CaptionArgs),
    /// Referring expressions (refer toolkit refs(unc).p / refs(google).p with instances.json, their JSON,
    /// or JSON Lines of image, expression and box) to the RefCOCO TSV.
    Refcoco(refcoco::RefcocoArgs),
}

/// The options every task has.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// The annotation file; its format is told apart by its content.
    #[arg(long, value_name = "FILE")]
    pub annotations: PathBuf,
    /// The folder the annotations' image file names are relative to.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// The TSV file to write. Beside it: OUT.skipped.txt (with --skip-bad), and
    /// for captions OUT.coco.json and OUT.df.json.
    #[arg(long, value_name = "OUT.tsv")]
    pub out: PathBuf,
    /// Only these splits of a Karpathy or refer file, comma-separated (Karpathy: train, restval, val, test;
    /// refer: train, val, test, testA, testB).
    #[arg(long, value_name = "NAME[,NAME...]")]
    pub split: Option<String>,
    /// Re-encode every image (default: keep the file's own bytes, as the reference's TSVs do).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub reencode: Option<Reencode>,
    /// Quality of --reencode jpeg.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// Decode every image completely to check it (default: read its header only).
    #[arg(long)]
    pub verify_images: bool,
    /// Threads that read and encode images (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Leave bad records out and list them in OUT.skipped.txt, instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
}

impl CommonArgs {
    /// The checker of bad records, with its report beside the output.
    pub fn checker(&self) -> Checker {
        Checker::new(self.skip_bad, sibling(&self.out, ".skipped.txt"))
    }

    /// The `--split` names, or `None` for all records.
    pub fn splits(&self) -> Option<Vec<String>> {
        self.split.as_ref().map(|s| s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
    }

    fn write_options(&self, label: &str) -> WriteOptions {
        WriteOptions {
            image: ImageOptions {
                reencode: self.reencode,
                jpeg_quality: self.jpeg_quality,
                verify: self.verify_images,
            },
            threads: self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            label: label.to_string(),
        }
    }

    /// Refuses `--split` for formats without splits.
    fn no_split(&self, format: &str) -> Result<()> {
        if self.split.is_some() {
            bail!(
                "--split picks a split of a Karpathy or refer file, but {} is {format}, which has none",
                self.annotations.display()
            );
        }
        Ok(())
    }
}

pub fn run(args: PrepareArgs) -> Result<()> {
    match args.task {
        PrepareTask::Caption(a) => caption::run(&a),
        PrepareTask::Refcoco(a) => refcoco::run(&a),
    }
}

/// What a task hands to [`write_dataset`].
pub struct Dataset {
    pub images: ImageTable,
    pub entries: Vec<Entry>,
    /// e.g. `COCO captions`, for the summary line.
    pub format: &'static str,
}

/// Writes the TSV of `data`'s entries; `extra` writes the task's other
/// outputs from the indices of the entries kept. The TSV is renamed into
/// place last, so once it exists everything is complete.
pub fn write_dataset(
    common: &CommonArgs,
    label: &str,
    mut checker: Checker,
    data: Dataset,
    extra: impl FnOnce(&[usize]) -> Result<()>,
) -> Result<()> {
    let report = checker.report_path().to_path_buf();
    let mut tsv = PendingFile::create(&common.out)?;
    let kept = write_rows(&data.images, &data.entries, &common.write_options(label), &mut checker, &mut tsv)?;
    if kept.is_empty() {
        bail!("{}: no rows to write ({} records skipped)", common.annotations.display(), checker.skipped().len());
    }
    extra(&kept)?;
    if checker.skipped().is_empty() {
        // A report left by an earlier run would describe another output.
        let _ = std::fs::remove_file(&report);
    } else {
        let mut file = PendingFile::create(&report)?;
        for p in checker.skipped() {
            writeln!(file.writer(), "{p}")?;
        }
        file.commit()?;
    }
    tsv.commit()?;
    let skipped = match checker.skipped().len() {
        0 => String::new(),
        n => format!("; skipped {n} bad records, listed in {}", report.display()),
    };
    eprintln!(
        "{label}: wrote {} rows from the {} file {} to {}{skipped}",
        kept.len(),
        data.format,
        common.annotations.display(),
        common.out.display()
    );
    Ok(())
}
