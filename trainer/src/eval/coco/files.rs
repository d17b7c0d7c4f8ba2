//! The two files `coco_eval.py` reads: the predictions in the reference's
//! result format (`SPLIT_predict.json`: `[{"image_id": …, "caption": "…"}, …]`)
//! and the references in COCO caption format (`{"images": [{"id": …}, …],
//! "annotations": [{"image_id": …, "caption": "…"}, …]}`). Image ids may be
//! strings or integers; `"7"` and `7` are the same image.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// One image to score: its prediction and its references, raw.
#[derive(Debug, Clone)]
pub struct ScoredImage {
    pub image_id: String,
    pub prediction: String,
    pub references: Vec<String>,
}

/// The images COCOEvalCap scores when `params['image_id']` is the
/// predictions' ids: those images, in the references file's image order.
#[derive(Debug, Clone)]
pub struct CaptionSet {
    pub images: Vec<ScoredImage>,
}

fn read_json(path: &Path, what: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

fn image_id(value: Option<&Value>, path: &Path, record: &str) -> Result<String> {
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => bail!("{}: {record}: \"image_id\" must be a string or an integer", path.display()),
    }
}

fn caption(value: &Value, path: &Path, record: &str) -> Result<String> {
    match value.get("caption") {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => bail!("{}: {record}: \"caption\" must be a string", path.display()),
    }
}

/// Predictions: image id → caption, in file order; one per image.
pub fn read_predictions(path: &Path) -> Result<Vec<(String, String)>> {
    let Value::Array(records) = read_json(path, "predictions file")? else {
        bail!(
            "{}: expected a JSON list of {{\"image_id\": …, \"caption\": \"…\"}} (the reference's SPLIT_predict.json)",
            path.display()
        );
    };
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let where_ = format!("record {i}");
        let id = image_id(record.get("image_id"), path, &where_)?;
        if let Some(first) = seen.insert(id.clone(), i) {
            bail!(
                "{}: {where_}: image {id} already has a prediction (record {first}); keep one per image",
                path.display()
            );
        }
        out.push((id, caption(record, path, &where_)?));
    }
    if out.is_empty() {
        bail!("{}: no predictions to score", path.display());
    }
    Ok(out)
}

/// Image id → its reference captions.
pub type CaptionsById = HashMap<String, Vec<String>>;

/// References: the images' order and each image's captions, in file order.
pub fn read_references(path: &Path) -> Result<(Vec<String>, CaptionsById)> {
    let root = read_json(path, "references file")?;
    let Some(Value::Array(annotations)) = root.get("annotations") else {
        bail!("{}: not COCO caption format: no \"annotations\" list", path.display());
    };
    let mut order = Vec::new();
    if let Some(Value::Array(images)) = root.get("images") {
        for (i, image) in images.iter().enumerate() {
            order.push(image_id(image.get("id"), path, &format!("images[{i}] (its \"id\")"))?);
        }
    }
    let mut captions = CaptionsById::new();
    for (i, ann) in annotations.iter().enumerate() {
        let where_ = format!("annotations[{i}]");
        let id = image_id(ann.get("image_id"), path, &where_)?;
        if root.get("images").is_none() && !captions.contains_key(&id) {
            order.push(id.clone());
        }
        captions.entry(id).or_default().push(caption(ann, path, &where_)?);
    }
    Ok((order, captions))
}

impl CaptionSet {
    /// Reads both files and joins them (see [`CaptionSet::join`]).
    pub fn load(predictions: &Path, references: &Path) -> Result<Self> {
        Self::join(read_predictions(predictions)?, references)
            .with_context(|| format!("scoring {}", predictions.display()))
    }

    /// Joins (image id, caption) predictions with the references file; every
    /// predicted image must have references (pycocotools' `loadRes` refuses
    /// others too), and appears once.
    pub fn join(predictions: Vec<(String, String)>, references: &Path) -> Result<Self> {
        let (order, mut refs) = read_references(references)?;
        let mut by_id: HashMap<String, String> = HashMap::new();
        for (id, caption) in predictions {
            if !refs.contains_key(&id) {
                bail!(
                    "image {id} has no reference captions in {}; predictions must be for its images",
                    references.display()
                );
            }
            if by_id.insert(id.clone(), caption).is_some() {
                bail!("image {id} has more than one prediction; keep one per image");
            }
        }
        let mut images = Vec::with_capacity(by_id.len());
        for id in order {
            if let Some(prediction) = by_id.remove(&id) {
                let references = refs.remove(&id).unwrap_or_default();
                images.push(ScoredImage { image_id: id, prediction, references });
            }
        }
        if let Some(id) = by_id.keys().next() {
            bail!("{}: image {id} has annotations but is not listed in \"images\"", references.display());
        }
        Ok(CaptionSet { images })
    }

    /// Validation predictions scored against their own (TSV) references, in their order.
    pub fn from_predictions(predictions: &[crate::eval::Prediction]) -> Self {
        let images = predictions
            .iter()
            .map(|p| ScoredImage {
                image_id: p.id.clone(),
                prediction: p.prediction.clone().unwrap_or_default(),
                references: p.references.clone().unwrap_or_default(),
            })
            .collect();
        CaptionSet { images }
    }
}
