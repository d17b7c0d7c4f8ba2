//! One validation prediction per line of `predictions.jsonl` (written by
//! validation, read by `elfin-train score` and `elfin report`). The format is
//! documented in `docs/evaluation.md`:
//!
//! - caption: `{"id": …, "prediction": "…", "references": ["…", …], "cider": …}`
//! - grounding: `{"id": …, "box": [x0,y0,x1,y1], "ref_box": [x0,y0,x1,y1], "iou": …, "hit": …}`
//!
//! plus, for either, an optional `image` (base64 PNG or JPEG thumbnail) and
//! `image_size` (`[w, h]` of the original image, the frame of the boxes).

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The sample's uniq-id from the TSV (a JSON string or integer on input).
    #[serde(deserialize_with = "string_or_integer")]
    pub id: String,
    /// Caption: the best beam, decoded and normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<String>,
    /// Caption: the references, normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<Vec<String>>,
    /// Caption: this image's CIDEr-D (× 10 scale, as the reference logs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cider: Option<f64>,
    /// Grounding: the predicted box in original-image pixels.
    #[serde(rename = "box", default, skip_serializing_if = "Option::is_none")]
    pub pred_box: Option<[f32; 4]>,
    /// Grounding: the reference box as the metric saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_box: Option<[f32; 4]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iou: Option<f32>,
    /// Grounding: whether the prediction counts for Acc@0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit: Option<bool>,
    /// Optional thumbnail: base64 of PNG or JPEG bytes (a `data:` URI is accepted too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `[width, height]` of the original image, when `image` is a scaled thumbnail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[u32; 2]>,
}

impl Prediction {
    pub fn caption(id: impl Into<String>, prediction: String, references: Vec<String>, cider: f64) -> Self {
        Prediction {
            id: id.into(),
            prediction: Some(prediction),
            references: Some(references),
            cider: Some(cider),
            ..Default::default()
        }
    }

    pub fn grounding(id: impl Into<String>, pred_box: [f32; 4], ref_box: [f32; 4]) -> Self {
        let overlap = super::grounding::overlap(pred_box, ref_box);
        Prediction {
            id: id.into(),
            pred_box: Some(pred_box),
            ref_box: Some(ref_box),
            iou: Some(overlap.iou),
            hit: Some(overlap.is_hit()),
            ..Default::default()
        }
    }
}

fn string_or_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(serde_json::Number),
    }
    match Id::deserialize(deserializer) {
        Ok(Id::Text(s)) => Ok(s),
        Ok(Id::Number(n)) => Ok(n.to_string()),
        Err(_) => Err(serde::de::Error::custom("`id` must be a string or a number")),
    }
}

/// Reads a predictions file into (1-based line number, record) pairs; errors
/// name the file and the line. Blank lines are skipped.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, Prediction)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening predictions file {}", path.display()))?;
    let mut predictions = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: reading", path.display(), index + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let prediction: Prediction = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a prediction record", path.display(), index + 1))?;
        predictions.push((index + 1, prediction));
    }
    Ok(predictions)
}

/// Writes one JSON object per line.
pub fn write_jsonl(path: &Path, predictions: &[Prediction]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for prediction in predictions {
        serde_json::to_writer(&mut out, prediction)?;
        out.write_all(b"\n")?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))
}
