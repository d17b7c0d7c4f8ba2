//! `elfin-train score`: the validation metrics on a saved predictions file,
//! offline (for checking a run's numbers or other systems' outputs).

use super::cider::CiderD;
use super::coco::{score_captions, CaptionSet};
use super::document_frequency::DocumentFrequency;
use super::grounding::overlap;
use super::prediction::{read_jsonl, write_jsonl, Prediction};
use super::text_norm::normalize_caption;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(subcommand)]
    pub metric: ScoreMetric,
}

#[derive(Debug, Subcommand)]
pub enum ScoreMetric {
    /// CIDEr-D of captions: lines {"id": …, "prediction": "…", "references": ["…", …]}.
    /// Prints {"cider": mean, "count": N} (the reference logs the mean rounded to 3 decimals).
    Cider {
        /// Predictions JSONL.
        #[arg(long, value_name = "P.jsonl")]
        predictions: PathBuf,
        /// Cached document frequencies (JSON, see docs/evaluation.md); default:
        /// computed from the references in the file.
        #[arg(long, value_name = "DF.json")]
        df: Option<PathBuf>,
        /// Score the strings as given, without the reference's clean-up
        /// (punctuation deleted, whitespace stripped).
        #[arg(long)]
        no_normalize: bool,
        /// Also write each line's score as {"id": …, "cider": …} to this JSONL file.
        #[arg(long, value_name = "SCORES.jsonl")]
        out: Option<PathBuf>,
    },
    /// The COCO caption metrics of COCOEvalCap (PTB tokenization, BLEU-1…4,
    /// ROUGE-L, CIDEr) on predictions in the reference's result format.
    /// Prints {"Bleu_1", …, "Bleu_4", "ROUGE_L", "CIDEr", "count"}; METEOR and
    /// SPICE: scripts/coco_caption_eval.py.
    Coco {
        /// Predictions: [{"image_id": …, "caption": "…"}, …] (SPLIT_predict.json).
        #[arg(long, value_name = "P.json")]
        predictions: PathBuf,
        /// References in COCO caption format (e.g. test_caption_coco_format.json).
        #[arg(long, value_name = "COCO_FORMAT.json")]
        references: PathBuf,
    },
    /// Acc@0.5 of boxes: lines {"id": …, "box": [x0,y0,x1,y1], "ref_box": [x0,y0,x1,y1]}
    /// (original-image pixels). Prints {"score": accuracy, "count": N}.
    Acc {
        /// Predictions JSONL.
        #[arg(long, value_name = "P.jsonl")]
        predictions: PathBuf,
        /// Also write each line's {"id", "iou", "hit"} to this JSONL file.
        #[arg(long, value_name = "SCORES.jsonl")]
        out: Option<PathBuf>,
    },
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let summary = match args.metric {
        ScoreMetric::Cider { predictions, df, no_normalize, out } => {
            score_cider(&predictions, df.as_deref(), !no_normalize, out.as_deref())?
        }
        ScoreMetric::Acc { predictions, out } => score_acc(&predictions, out.as_deref())?,
        ScoreMetric::Coco { predictions, references } => {
            serde_json::to_value(score_captions(&CaptionSet::load(&predictions, &references)?))?
        }
    };
    println!("{summary}");
    Ok(())
}

fn score_cider(path: &Path, df: Option<&Path>, normalize: bool, out: Option<&Path>) -> Result<serde_json::Value> {
    let clean = |s: &str| if normalize { normalize_caption(s) } else { s.to_string() };
    let mut ids = Vec::new();
    let mut samples: Vec<(String, Vec<String>)> = Vec::new();
    for (line, record) in read_jsonl(path)? {
        let (Some(prediction), Some(references)) = (&record.prediction, &record.references) else {
            bail!("{}:{line}: a caption record needs \"prediction\" and \"references\"", path.display());
        };
        if references.is_empty() {
            bail!("{}:{line}: \"references\" is empty; CIDEr-D needs at least one", path.display());
        }
        samples.push((clean(prediction), references.iter().map(|r| clean(r)).collect()));
        ids.push(record.id);
    }
    if samples.is_empty() {
        bail!("{}: no predictions to score", path.display());
    }
    let scorer = match df {
        Some(df) => CiderD::new(DocumentFrequency::load(df)?),
        None => CiderD::from_references(&samples.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>()),
    };
    let scores = scorer.score_all(&samples);
    if let Some(out) = out {
        let records: Vec<Prediction> = ids
            .into_iter()
            .zip(&scores)
            .map(|(id, &cider)| Prediction { id, cider: Some(cider), ..Default::default() })
            .collect();
        write_jsonl(out, &records)?;
    }
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    Ok(json!({"cider": mean, "count": scores.len()}))
}

fn score_acc(path: &Path, out: Option<&Path>) -> Result<serde_json::Value> {
    let mut per_line = Vec::new();
    for (line, record) in read_jsonl(path)? {
        let (Some(pred_box), Some(ref_box)) = (record.pred_box, record.ref_box) else {
            bail!("{}:{line}: a grounding record needs \"box\" and \"ref_box\"", path.display());
        };
        let o = overlap(pred_box, ref_box);
        per_line.push(Prediction { id: record.id, iou: Some(o.iou), hit: Some(o.is_hit()), ..Default::default() });
    }
    if per_line.is_empty() {
        bail!("{}: no predictions to score", path.display());
    }
    if let Some(out) = out {
        write_jsonl(out, &per_line).with_context(|| format!("writing per-line scores to {}", out.display()))?;
    }
    let hits = per_line.iter().filter(|p| p.hit == Some(true)).count();
    Ok(json!({"score": hits as f64 / per_line.len() as f64, "count": per_line.len()}))
}
