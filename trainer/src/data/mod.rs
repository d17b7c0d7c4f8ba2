//! Data: OFA TSV files, the OFA tokenizer, preprocessing of the caption and
//! RefCOCO tasks, batching over ranks, prefetching, and synthetic datasets.
//! See `docs/data.md`.

pub mod boxes;
pub mod bpe;
pub mod caption;
pub mod cli;
pub mod collate;
pub mod dictionary;
pub mod image;
pub mod loader;
pub mod refcoco;
pub mod resize;
mod rng;
pub mod sampler;
pub mod synth;
pub mod text;
pub mod tsv;

pub use self::bpe::Tokenizer;
pub use self::cli::{DataArgs, TaskKind};
pub use self::dictionary::Dictionary;
pub use self::loader::{Loader, MicroBatch};
pub use self::sampler::{TrainPlan, ValidPlan};
pub use self::tsv::BadRow;

use self::image::Normalize;
use self::tsv::{Row, TsvFile};
use crate::model::NetInput;
use ::image::RgbImage;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Valid,
}

/// What evaluation needs of a sample besides the model's output.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalRef {
    /// All reference captions of the image (CIDEr).
    Caption { captions: Vec<String> },
    /// The original box in source pixels and the resize ratios `P/w`, `P/h` (Acc@0.5).
    Region { region_coord: [f32; 4], w_resize_ratio: f32, h_resize_ratio: f32 },
}

/// One preprocessed row.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    /// `[bos] + prompt + [eos]`.
    pub source: Vec<i64>,
    /// `tgt + [eos]`.
    pub target: Vec<i64>,
    /// `[bos] + tgt`.
    pub prev_output_tokens: Vec<i64>,
    /// The resized image, `P × P` u8 RGB; normalised when collated.
    pub image: RgbImage,
    pub eval_ref: EvalRef,
}

impl Sample {
    fn new(id: String, source: Vec<i64>, tgt: Vec<i64>, dict: &Dictionary, image: RgbImage, eval_ref: EvalRef) -> Self {
        Sample {
            id,
            source,
            target: [tgt.as_slice(), &[dict.eos()]].concat(),
            prev_output_tokens: [&[dict.bos()], tgt.as_slice()].concat(),
            image,
            eval_ref,
        }
    }
}

/// A collated batch, as the criterion, the trainer and evaluation use it.
#[derive(Debug)]
pub struct Batch {
    pub net_input: NetInput,
    /// i64 `[B, T]`, padded with `<pad>`.
    pub target: Tensor,
    /// Non-pad target tokens (each eos included).
    pub ntokens: i64,
    pub nsentences: i64,
    pub ids: Vec<String>,
    pub refs: Vec<EvalRef>,
}

/// The preprocessing settings shared by the tasks.
#[derive(Debug, Clone)]
pub struct Preprocess {
    pub patch_image_size: u32,
    pub max_image_size: u32,
    pub max_src_length: usize,
    pub max_tgt_length: usize,
    pub num_bins: usize,
}

impl Preprocess {
    /// Decodes the image in selected field `k` of `row`.
    fn decode(&self, row: &Row, k: usize) -> Result<RgbImage> {
        let bytes = image::decode_base64(&row.fields[k]).map_err(|e| row.bad(k, "image", e.to_string()))?;
        image::decode_rgb(&bytes).map_err(|e| row.bad(k, "image", e.to_string()).into())
    }

    /// Resizes to `P × P` (both tasks; the aspect ratio is not kept, as in the reference).
    fn resize(&self, img: &RgbImage) -> RgbImage {
        resize::resize_bicubic(img, self.patch_image_size, self.patch_image_size)
    }

    fn image(&self, row: &Row, k: usize) -> Result<RgbImage> {
        Ok(self.resize(&self.decode(row, k)?))
    }
}

/// A task: its kind, its settings and the tokenizer, loaded once.
pub struct Task {
    args: DataArgs,
    tokenizer: Arc<Tokenizer>,
}

impl Task {
    /// Loads the tokenizer of `--bpe-dir`.
    pub fn new(args: &DataArgs) -> Result<Task> {
        let dir = args
            .bpe_dir
            .as_ref()
            .context("--bpe-dir is required: the folder with encoder.json, vocab.bpe and dict.txt")?;
        let tokenizer = Tokenizer::from_bpe_dir(dir, args.code_dict_size, args.num_bins)?;
        Ok(Task { args: args.clone(), tokenizer: Arc::new(tokenizer) })
    }

    pub fn kind(&self) -> TaskKind {
        self.args.task
    }
    pub fn args(&self) -> &DataArgs {
        &self.args
    }
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }
    pub fn dictionary(&self) -> &Dictionary {
        self.tokenizer.dictionary()
    }

    /// The file of `split` in `epoch` (1-based), as the reference picks it:
    /// train cycles over all paths but the last, valid is the last.
    pub fn data_path(&self, split: Split, epoch: usize) -> Result<PathBuf> {
        let data = self.args.data.as_deref().context("--data is required: train.tsv,valid.tsv")?;
        let paths: Vec<&str> = data.split(',').filter(|p| !p.is_empty()).collect();
        anyhow::ensure!(!paths.is_empty(), "--data {data:?} names no file");
        let p = match split {
            Split::Valid => paths[paths.len() - 1],
            Split::Train if paths.len() == 1 => paths[0],
            Split::Train => paths[(epoch.max(1) - 1) % (paths.len() - 1)],
        };
        Ok(PathBuf::from(p))
    }

    /// Opens the dataset of `split` for `epoch` (1-based).
    pub fn load(&self, split: Split, epoch: usize) -> Result<Dataset> {
        let path = self.data_path(split, epoch)?;
        let selected = self.args.selected_cols()?;
        let file = TsvFile::open(&path, &selected, self.args.index_cache_dir.as_deref())?;
        Ok(Dataset {
            kind: self.args.task,
            split,
            file,
            tokenizer: Arc::clone(&self.tokenizer),
            pre: self.args.preprocess(),
            norm: Normalize::new(self.args.imagenet_default_mean_and_std),
        })
    }
}

/// The rows of one file, preprocessed on demand.
pub struct Dataset {
    kind: TaskKind,
    split: Split,
    file: TsvFile,
    tokenizer: Arc<Tokenizer>,
    pre: Preprocess,
    norm: Normalize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.file.len()
    }
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
    }
    pub fn split(&self) -> Split {
        self.split
    }
    pub fn file(&self) -> &TsvFile {
        &self.file
    }

    /// Row `i` preprocessed. A malformed row gives an error that downcasts to [`BadRow`].
    pub fn get(&self, i: usize) -> Result<Sample> {
        let row = self.file.row(i)?;
        match self.kind {
            TaskKind::Caption => caption::build(&row, self.split, &self.tokenizer, &self.pre),
            TaskKind::Refcoco => refcoco::build(&row, &self.tokenizer, &self.pre),
        }
    }

    /// Pads and stacks non-empty `samples`.
    pub fn collate(&self, samples: &[Sample]) -> Batch {
        collate::collate(samples, &self.norm)
    }
}
