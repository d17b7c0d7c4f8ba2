//! Command-line options of the data side, and the `tokenize` command.

use super::tsv::parse_selected_cols;
use super::{Preprocess, Tokenizer};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Image captioning (COCO layout: uniq-id, image-id, caption, labels, image).
    Caption,
    /// Visual grounding: RefCOCO, RefCOCO+ and RefCOCOg (uniq-id, image-id, text, x0,y0,x1,y1, image).
    Refcoco,
}

/// The data options, named as the reference's task options.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct DataArgs {
    /// Comma-separated TSV files: training file(s), then the validation file last.
    #[arg(long)]
    pub data: Option<String>,
    /// Task whose preprocessing and evaluation to use.
    #[arg(long, value_enum, default_value = "caption")]
    pub task: TaskKind,
    /// Comma-separated 0-based columns to read, in the order the task unpacks them
    /// [default: 0,4,2 for caption, 0,4,2,3 for refcoco].
    #[arg(long)]
    pub selected_cols: Option<String>,
    /// Folder with the GPT-2 BPE files encoder.json and vocab.bpe and the fairseq dict.txt.
    #[arg(long)]
    pub bpe_dir: Option<PathBuf>,
    /// Words kept of a grounding expression.
    #[arg(long, default_value_t = 128)]
    pub max_src_length: usize,
    /// Words kept of a training caption.
    #[arg(long, default_value_t = 30)]
    pub max_tgt_length: usize,
    /// Side of the square image the model sees.
    #[arg(long, default_value_t = 480)]
    pub patch_image_size: u32,
    /// Boxes are divided by this before quantisation.
    #[arg(long, default_value_t = 512)]
    pub max_image_size: u32,
    /// Number of `<bin_i>` location tokens.
    #[arg(long, default_value_t = 1000)]
    pub num_bins: usize,
    /// Number of `<code_i>` image-code tokens in the dictionary (unused by these tasks, but part of the vocabulary).
    #[arg(long, default_value_t = 8192)]
    pub code_dict_size: usize,
    /// Threads decoding and preprocessing batches ahead of the model (0: in the training thread).
    #[arg(long, default_value_t = 2)]
    pub num_workers: usize,
    /// Skip malformed rows (counted and reported at each epoch's end) instead of stopping.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Normalise images with ImageNet's mean and std instead of 0.5 and 0.5.
    #[arg(long)]
    pub imagenet_default_mean_and_std: bool,
    /// Where TSV row indexes go when the data folder is not writable.
    #[arg(long, env = "ELFIN_INDEX_CACHE_DIR")]
    pub index_cache_dir: Option<PathBuf>,
}

impl DataArgs {
    pub fn selected_cols(&self) -> Result<Vec<usize>> {
        let cols = match (&self.selected_cols, self.task) {
            (Some(s), _) => parse_selected_cols(s)?,
            (None, TaskKind::Caption) => vec![0, 4, 2],
            (None, TaskKind::Refcoco) => vec![0, 4, 2, 3],
        };
        let need = match self.task {
            TaskKind::Caption => 3,
            TaskKind::Refcoco => 4,
        };
        anyhow::ensure!(
            cols.len() == need,
            "--selected-cols: the {:?} task reads {need} columns (uniq-id, image, text{}), got {}",
            self.task,
            if need == 4 { ", region-coord" } else { "" },
            cols.len()
        );
        Ok(cols)
    }

    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            patch_image_size: self.patch_image_size,
            max_image_size: self.max_image_size,
            max_src_length: self.max_src_length,
            max_tgt_length: self.max_tgt_length,
            num_bins: self.num_bins,
        }
    }
}

/// `elfin-train tokenize`: one JSON line `{"text", "ids"}` per input line.
#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {
    /// Folder with encoder.json, vocab.bpe and dict.txt.
    #[arg(long)]
    pub bpe_dir: PathBuf,
    #[arg(long, default_value_t = 8192)]
    pub code_dict_size: usize,
    #[arg(long, default_value_t = 1000)]
    pub num_bins: usize,
}

pub fn run_tokenize(args: &TokenizeArgs) -> Result<()> {
    let tok = Tokenizer::from_bpe_dir(&args.bpe_dir, args.code_dict_size, args.num_bins)?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.context("reading standard input")?;
        let ids = tok.encode(&line)?;
        let json = serde_json::json!({ "text": line, "ids": ids });
        writeln!(out, "{json}")?;
    }
    Ok(())
}
