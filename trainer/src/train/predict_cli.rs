//! `elfin-train predict`: a caption for an image, or the box of a referring
//! expression, from a checkpoint trained by elfin (whose header carries the
//! run's flags: task, BPE folder, model, image size, --eval-args).
//!
//! The image goes through the data module's own TSV path (a one-row file in a
//! temporary folder), so it is preprocessed exactly as training data is.

use super::{load_model_tensors, model_config, TrainArgs};
use crate::checkpoint;
use crate::data::{EvalRef, Split, Task, TaskKind};
use crate::eval::grounding::BoxDecoder;
use crate::eval::text_norm::normalize_caption;
use crate::generate::{beam_search, OfaStepModel};
use crate::model::OfaModel;
use anyhow::{bail, Context, Result};
use base64::Engine;
use std::io::Write;
use std::path::PathBuf;
use tch::{nn, Device};

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// A checkpoint written by `elfin-train train` (checkpoint_best.safetensors, …).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The image (JPEG, PNG, or any format the image crate reads).
    #[arg(long)]
    pub image: PathBuf,
    /// Grounding: the referring expression whose box to find.
    #[arg(long)]
    pub text: Option<String>,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let state = checkpoint::load_checkpoint(&args.checkpoint)?;
    let mut run: TrainArgs = serde_json::from_value(state.config.clone()).with_context(|| {
        format!(
            "{} does not carry elfin's training flags; predict needs a checkpoint written by `elfin-train train`",
            args.checkpoint.display()
        )
    })?;
    let bytes =
        std::fs::read(&args.image).with_context(|| format!("cannot read the image {}", args.image.display()))?;
    let (w, h) = image::load_from_memory(&bytes)
        .map(|i| (i.width(), i.height()))
        .with_context(|| format!("{} is not an image this build can decode", args.image.display()))?;

    // One row in the task's TSV layout: uniq-id, image-id, text, box or labels, base64 image.
    let tmp = tempfile::tempdir()?;
    let tsv = tmp.path().join("predict.tsv");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let (text, fourth, cols) = match (run.data.task, &args.text) {
        (TaskKind::Caption, None) => (String::new(), String::new(), "0,4,2"),
        (TaskKind::Caption, Some(_)) => bail!("this checkpoint was trained for captioning: leave out --text"),
        (TaskKind::Refcoco, Some(t)) => (t.replace(['\t', '\n'], " "), format!("0,0,{w},{h}"), "0,4,2,3"),
        (TaskKind::Refcoco, None) => {
            bail!("this checkpoint was trained for grounding: give the expression with --text")
        }
    };
    writeln!(std::fs::File::create(&tsv)?, "predict\t0\t{text}\t{fourth}\t{b64}")?;
    run.data.data = Some(tsv.display().to_string());
    run.data.selected_cols = Some(cols.to_string());
    run.data.index_cache_dir = Some(tmp.path().to_path_buf());

    let task = Task::new(&run.data)?;
    let dataset = task.load(Split::Valid, 1)?;
    let batch = dataset.collate(&[dataset.get(0)?]);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = OfaModel::new(&vs.root(), &model_config(&run)?, task.dictionary().len() as i64);
    load_model_tensors(&mut vs, &state.model, &args.checkpoint)?;

    let cfg = super::validate::beam_config(&run, task.dictionary())?;
    let src_len = batch.net_input.src_tokens.size()[1] as usize;
    let hyps = tch::no_grad(|| {
        let mut step =
            OfaStepModel::new(&model, &batch.net_input, cfg.beam, true, crate::model::Precision::Fp32, Device::Cpu);
        beam_search(&mut step, 1, src_len, model.vocab_size(), &cfg)
    })?;
    let mut tokens = hyps.into_iter().next().and_then(|h| h.into_iter().next()).map(|h| h.tokens).unwrap_or_default();
    if tokens.last() == Some(&cfg.eos) {
        tokens.pop();
    }
    match &batch.refs[0] {
        EvalRef::Caption { .. } => println!("{}", normalize_caption(&task.tokenizer().decode(&tokens)?)),
        EvalRef::Region { w_resize_ratio, h_resize_ratio, .. } => {
            let decoder = BoxDecoder {
                num_bins: run.data.num_bins as i64,
                max_image_size: run.data.max_image_size as f32,
                fp16: false,
            };
            let dict_len = task.dictionary().len() as i64;
            let bins: [i64; 4] =
                std::array::from_fn(|k| tokens.get(k).map_or(0, |&t| decoder.bin_of_token(t, dict_len)));
            let b = decoder.decode(bins, *w_resize_ratio, *h_resize_ratio);
            println!("{}", serde_json::json!({"box": b, "image_size": [w, h]}));
        }
    }
    Ok(())
}
