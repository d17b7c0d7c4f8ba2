//! Validation during training (spec §4): the loss on the validation set in
//! eval mode, then beam search and the task's metric (CIDEr-D for captions,
//! Acc@0.5 for grounding), each rank on its share, sums over ranks.

use super::TrainArgs;
use crate::criterion::Criterion;
use crate::data::{Batch, Dataset, EvalRef, Loader, Split, Task, TaskKind, ValidPlan};
use crate::dist::{ProcessGroup, World};
use crate::eval::cider::{round_like_python, CiderD};
use crate::eval::document_frequency::DocumentFrequency;
use crate::eval::grounding::BoxDecoder;
use crate::eval::prediction::Prediction;
use crate::eval::text_norm::normalize_caption;
use crate::generate::{beam_search, BeamSearchConfig, OfaStepModel};
use crate::model::{OfaModel, Precision};
use anyhow::{Context, Result};
use std::sync::Arc;
use tch::Device;

/// Thumbnails kept in `predictions.jsonl` for the report's gallery.
const GALLERY: usize = 16;

pub struct Validator {
    dataset: Arc<Dataset>,
    kind: TaskKind,
    batch_size: usize,
    num_workers: usize,
    rank: usize,
    world_size: usize,
    seed: Option<u64>,
    beam: BeamSearchConfig,
    metric: Metric,
    tokenizer: Arc<crate::data::Tokenizer>,
}

enum Metric {
    Cider(CiderD),
    Acc(BoxDecoder),
    /// No --eval-cider / --eval-acc: the validation loss only.
    None,
}

/// Sums of one validation, all-reduced as one vector.
const LOSS: usize = 0;
const NLL: usize = 1;
const NTOKENS: usize = 2;
const NSENTENCES: usize = 3;
const SAMPLE_SIZE: usize = 4;
const SCORE_SUM: usize = 5;
const SCORE_CNT: usize = 6;

pub struct ValidResult {
    /// The fields of the `valid` log line, in order.
    pub values: Vec<(String, f64)>,
    /// Every prediction in the validation set's row order (the first few with a thumbnail).
    pub predictions: Vec<Prediction>,
}

impl Validator {
    pub fn new(args: &TrainArgs, task: &Task, world: &World) -> Result<Validator> {
        let dataset = Arc::new(task.load(Split::Valid, 1)?);
        let dict = task.dictionary();
        let metric = if args.eval.eval_cider {
            let scorer = match &args.eval.eval_cider_cached_tokens {
                Some(path) => CiderD::new(DocumentFrequency::load(path)?),
                // Every rank derives the same frequencies from all references, so scores do not depend on the ranks.
                None => CiderD::from_references(&all_references(&dataset)?),
            };
            Metric::Cider(scorer)
        } else if args.eval.eval_acc {
            Metric::Acc(BoxDecoder {
                num_bins: args.data.num_bins as i64,
                max_image_size: args.data.max_image_size as f32,
                fp16: args.optim.fp16,
            })
        } else {
            Metric::None
        };
        let beam = beam_config(args, dict)?;
        Ok(Validator {
            dataset,
            kind: task.kind(),
            batch_size: args.eval.batch_size_valid.unwrap_or(args.run.batch_size),
            num_workers: args.data.num_workers,
            rank: world.rank,
            world_size: world.size,
            seed: args.eval.fixed_validation_seed,
            beam,
            metric,
            tokenizer: Arc::clone(task.tokenizer()),
        })
    }

    pub fn run(
        &self,
        model: &OfaModel,
        criterion: &Criterion,
        pg: &ProcessGroup,
        device: Device,
        precision: Precision,
    ) -> Result<ValidResult> {
        if let Some(seed) = self.seed {
            tch::manual_seed(seed as i64);
        }
        let plan = ValidPlan::new(self.dataset.len(), self.batch_size, self.rank, self.world_size);
        let loader = Loader::new(Arc::clone(&self.dataset), plan.jobs(), self.num_workers, false);
        let mut sums = [0f64; 7];
        let mut predictions = Vec::new();
        for mb in loader {
            let mb = mb?;
            // The batch's first row in the set: the plan's batches are consecutive rows.
            let first_row = mb.update * self.batch_size;
            let Some(batch) = mb.batch else { continue };
            let input = batch.net_input.to_device(device);
            let target = batch.target.to_device(device);
            let out = tch::no_grad(|| {
                let logits = precision.run(device, || model.forward_t(&input, false));
                criterion.compute(&logits, &target, None, None, 0)
            })?;
            sums[LOSS] += out.loss;
            sums[NLL] += out.nll_loss;
            sums[NTOKENS] += batch.ntokens as f64;
            sums[NSENTENCES] += batch.nsentences as f64;
            sums[SAMPLE_SIZE] += out.sample_size as f64;
            if matches!(self.metric, Metric::None) {
                continue;
            }
            let hyps = tch::no_grad(|| self.generate(model, &input, device, precision))?;
            for (i, tokens) in hyps.iter().enumerate() {
                let mut p = self.score(&batch, i, tokens)?;
                sums[SCORE_SUM] += p.cider.unwrap_or(0.0) + f64::from(u8::from(p.hit.unwrap_or(false)));
                sums[SCORE_CNT] += 1.0;
                let row = first_row + i;
                if row < GALLERY {
                    p.image = Some(thumbnail(&batch, i)?);
                }
                predictions.push((row, p));
            }
        }
        pg.all_reduce_f64(&mut sums)?;
        let predictions = gather_predictions(pg, &predictions)?;
        let per = |x: f64| if sums[SAMPLE_SIZE] > 0.0 { x / sums[SAMPLE_SIZE] } else { 0.0 };
        let nll = per(sums[NLL]);
        let mut values = vec![
            ("loss".to_string(), per(sums[LOSS])),
            ("nll_loss".to_string(), nll),
            ("ntokens".to_string(), sums[NTOKENS]),
            ("nsentences".to_string(), sums[NSENTENCES]),
            ("sample_size".to_string(), sums[SAMPLE_SIZE]),
            ("ppl".to_string(), 2f64.powf(nll)),
        ];
        let mean = if sums[SCORE_CNT] > 0.0 { sums[SCORE_SUM] / sums[SCORE_CNT] } else { 0.0 };
        match self.metric {
            Metric::Cider(_) => values.push(("cider".into(), round_like_python(mean, 3))),
            Metric::Acc(_) => values.push(("score".into(), round_like_python(mean, 4))),
            Metric::None => {}
        }
        Ok(ValidResult { values, predictions })
    }

    /// The best hypothesis of every row (tokens without the final eos).
    fn generate(
        &self,
        model: &OfaModel,
        input: &crate::model::NetInput,
        device: Device,
        precision: Precision,
    ) -> Result<Vec<Vec<i64>>> {
        let bsz = input.src_tokens.size()[0] as usize;
        let src_len = input.src_tokens.size()[1] as usize;
        let mut step = OfaStepModel::new(
            model,
            input,
            self.beam.beam.min(model.vocab_size() as usize - 1),
            true,
            precision,
            device,
        );
        let hyps = beam_search(&mut step, bsz, src_len, model.vocab_size(), &self.beam)?;
        Ok(hyps
            .into_iter()
            .map(|h| {
                let mut tokens = h.into_iter().next().map(|h| h.tokens).unwrap_or_default();
                if tokens.last() == Some(&self.beam.eos) {
                    tokens.pop();
                }
                tokens
            })
            .collect())
    }

    /// The prediction record of row `i`, with its score.
    fn score(&self, batch: &Batch, i: usize, tokens: &[i64]) -> Result<Prediction> {
        let id = batch.ids[i].clone();
        Ok(match (&self.metric, &batch.refs[i]) {
            (Metric::Cider(scorer), EvalRef::Caption { captions }) => {
                let text = normalize_caption(&self.tokenizer.decode(tokens)?);
                let refs: Vec<String> = captions.iter().map(|c| normalize_caption(c)).collect();
                let cider = scorer.score(&text, &refs);
                Prediction::caption(id, text, refs, cider)
            }
            (Metric::Acc(decoder), EvalRef::Region { region_coord, w_resize_ratio, h_resize_ratio }) => {
                let dict_len = self.tokenizer.dictionary().len() as i64;
                // Fewer than four tokens (only possible without min_len 4) count as bin 0.
                let bins: [i64; 4] =
                    std::array::from_fn(|k| tokens.get(k).map_or(0, |&t| decoder.bin_of_token(t, dict_len)));
                let pred = decoder.decode(bins, *w_resize_ratio, *h_resize_ratio);
                Prediction::grounding(id, pred, decoder.reference_box(*region_coord))
            }
            _ => anyhow::bail!("validation sample {id} does not match the {:?} task's metric", self.kind),
        })
    }
}

/// The generator of `--eval-args` (and `--constraint-range`).
pub fn beam_config(args: &TrainArgs, dict: &crate::data::Dictionary) -> Result<BeamSearchConfig> {
    let g = &args.eval.eval_args;
    Ok(BeamSearchConfig {
        beam: g.beam,
        max_len_a: g.max_len_a,
        max_len_b: g.max_len_b as i64,
        min_len: g.min_len as i64,
        no_repeat_ngram_size: g.no_repeat_ngram_size,
        lenpen: if g.unnormalized { 0.0 } else { g.lenpen },
        temperature: g.temperature,
        unk_penalty: g.unkpen,
        constraint_range: args
            .criterion
            .constraint_range
            .as_deref()
            .map(elfin_kernels::parse_constraint_range)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        bos: dict.bos(),
        pad: dict.pad(),
        eos: dict.eos(),
        unk: dict.unk(),
    })
}

/// All ranks' predictions, in the validation set's row order, on every rank.
fn gather_predictions(pg: &ProcessGroup, local: &[(usize, Prediction)]) -> Result<Vec<Prediction>> {
    let mut bytes = Vec::new();
    for p in local {
        serde_json::to_writer(&mut bytes, p)?;
        bytes.push(b'\n');
    }
    let mut all: Vec<(usize, Prediction)> = Vec::new();
    for part in pg.all_gather_bytes(&bytes)? {
        for line in part.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            all.push(serde_json::from_slice(line).context("a rank sent a malformed prediction record")?);
        }
    }
    all.sort_by_key(|(row, _)| *row);
    Ok(all.into_iter().map(|(_, p)| p).collect())
}

/// Every validation row's references, read without decoding images.
fn all_references(dataset: &Dataset) -> Result<Vec<Vec<String>>> {
    (0..dataset.len())
        .map(|i| {
            let row = dataset.file().row(i)?;
            let text = row.fields.get(2).context("the caption column (third selected column) is missing")?;
            Ok(crate::data::caption::clean_valid_captions(text).iter().map(|c| normalize_caption(c)).collect())
        })
        .collect()
}

/// Row `i`'s model image as a base64 PNG (the normalised pixels mapped back to bytes).
fn thumbnail(batch: &Batch, i: usize) -> Result<String> {
    use base64::Engine;
    let img = batch.net_input.patch_images.get(i as i64);
    let (h, w) = (img.size()[1] as u32, img.size()[2] as u32);
    let bytes =
        ((img * 0.5 + 0.5) * 255.0).round().clamp(0.0, 255.0).to_kind(tch::Kind::Uint8).permute([1, 2, 0]).contiguous();
    let data = Vec::<u8>::try_from(bytes.reshape([-1]))?;
    let rgb = image::RgbImage::from_raw(w, h, data).context("thumbnail buffer has the wrong size")?;
    let mut png = Vec::new();
    rgb.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(png))
}
