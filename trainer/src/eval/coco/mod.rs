//! The COCO caption metrics as the reference reports them (`coco_eval.py`:
//! pycocoevalcap's `COCOEvalCap` on `test_caption_coco_format.json`):
//! PTB tokenization first, then BLEU-1…4, ROUGE-L and CIDEr (here, in Rust);
//! METEOR and SPICE need Java models and run in `scripts/coco_caption_eval.py`.
//! See docs/evaluation.md.

pub mod bleu;
pub mod files;
pub mod ptb;
pub mod rouge;

use super::cider::CiderD;
pub use files::{read_predictions, read_references, CaptionSet};
pub use ptb::{tokenize_caption, tokenize_captions};
use serde::Serialize;

/// The corpus scores, under COCOEvalCap's metric names.
#[derive(Debug, Clone, Serialize)]
pub struct CocoScores {
    #[serde(rename = "Bleu_1")]
    pub bleu_1: f64,
    #[serde(rename = "Bleu_2")]
    pub bleu_2: f64,
    #[serde(rename = "Bleu_3")]
    pub bleu_3: f64,
    #[serde(rename = "Bleu_4")]
    pub bleu_4: f64,
    #[serde(rename = "ROUGE_L")]
    pub rouge_l: f64,
    /// CIDEr-D with document frequencies from the scored images' references
    /// (the usual ×100 number is this × 100).
    #[serde(rename = "CIDEr")]
    pub cider: f64,
    /// Images scored.
    pub count: usize,
}

/// Scores raw captions (one hypothesis and its references per image) the
/// way COCOEvalCap does: every caption PTB-tokenized, then the metrics.
pub fn score_captions(set: &CaptionSet) -> CocoScores {
    // Two tokenizer runs, as COCOEvalCap: all references, then all predictions.
    let flat_refs: Vec<&str> = set.images.iter().flat_map(|img| img.references.iter().map(String::as_str)).collect();
    let mut refs = tokenize_captions(&flat_refs).into_iter();
    let predictions = tokenize_captions(&set.images.iter().map(|img| img.prediction.as_str()).collect::<Vec<_>>());
    let samples: Vec<(String, Vec<String>)> = set
        .images
        .iter()
        .zip(predictions)
        .map(|(img, p)| (p, refs.by_ref().take(img.references.len()).collect()))
        .collect();
    let [bleu_1, bleu_2, bleu_3, bleu_4] = bleu::corpus_bleu(&samples);
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let rouge: Vec<f64> = samples.iter().map(|(h, r)| rouge::rouge_l(h, r)).collect();
    let references: Vec<Vec<String>> = samples.iter().map(|(_, r)| r.clone()).collect();
    let cider = CiderD::from_references(&references).score_all(&samples);
    CocoScores { bleu_1, bleu_2, bleu_3, bleu_4, rouge_l: mean(&rouge), cider: mean(&cider), count: samples.len() }
}
