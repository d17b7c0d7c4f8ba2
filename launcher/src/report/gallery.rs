//! Validation samples from a run's `predictions.jsonl` (format in
//! docs/evaluation.md): the thumbnail with the caption, or the predicted
//! (red) and reference (green) boxes drawn on the thumbnail (or on a blank
//! canvas of the image's size when there is none).

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};
use plotters::prelude::*;
use serde::Deserialize;
use std::path::Path;

/// Longest side of a gallery picture.
const THUMB: u32 = 320;
pub const PRED_COLOUR: RGBColor = RGBColor(220, 30, 30);
pub const REF_COLOUR: RGBColor = RGBColor(20, 170, 60);

/// The fields of a prediction line the report shows; all optional but `id`.
#[derive(Debug, Deserialize)]
struct Line {
    id: serde_json::Value,
    prediction: Option<String>,
    references: Option<Vec<String>>,
    cider: Option<f64>,
    #[serde(rename = "box")]
    pred_box: Option<[f32; 4]>,
    ref_box: Option<[f32; 4]>,
    iou: Option<f32>,
    hit: Option<bool>,
    image: Option<String>,
    image_size: Option<[u32; 2]>,
}

/// One gallery card.
pub struct Sample {
    pub id: String,
    /// PNG to show (thumbnail, with boxes when the sample has them).
    pub picture: Option<Vec<u8>>,
    /// Why there is no picture although the line had an image.
    pub picture_problem: Option<String>,
    pub prediction: Option<String>,
    pub references: Vec<String>,
    pub cider: Option<f64>,
    pub boxes: Option<([f32; 4], [f32; 4])>,
    pub iou: Option<f32>,
    pub hit: Option<bool>,
}

/// Reads up to `limit` samples; errors name the file and line.
pub fn load(path: &Path, limit: usize) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).take(limit) {
        let line: Line = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a prediction record", path.display(), index + 1))?;
        samples.push(sample(line));
    }
    Ok(samples)
}

fn sample(line: Line) -> Sample {
    let boxes = line.pred_box.zip(line.ref_box);
    // An unreadable thumbnail is reported on the card; boxes are still drawn.
    let (thumbnail, mut picture_problem) = match line.image.as_deref().map(decode_image).transpose() {
        Ok(t) => (t, None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let picture = picture(thumbnail, line.image_size, boxes).unwrap_or_else(|e| {
        picture_problem = Some(format!("{e:#}"));
        None
    });
    Sample {
        id: match &line.id {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        picture,
        picture_problem,
        prediction: line.prediction,
        references: line.references.unwrap_or_default(),
        cider: line.cider,
        boxes,
        iou: line.iou,
        hit: line.hit,
    }
}

fn picture(
    thumbnail: Option<DynamicImage>,
    image_size: Option<[u32; 2]>,
    boxes: Option<([f32; 4], [f32; 4])>,
) -> Result<Option<Vec<u8>>> {
    let (canvas, frame) = match (thumbnail, boxes) {
        (None, None) => return Ok(None),
        (Some(img), _) => {
            let frame = image_size.map(|[w, h]| (w as f32, h as f32));
            let frame = frame.unwrap_or((img.width() as f32, img.height() as f32));
            (fit(img), frame)
        }
        (None, Some((p, r))) => {
            // No thumbnail: a grey canvas in the image's frame (or the boxes' extent).
            let (w, h) = match image_size {
                Some([w, h]) => (w as f32, h as f32),
                None => (p[2].max(r[2]).max(1.0), p[3].max(r[3]).max(1.0)),
            };
            let scale = THUMB as f32 / w.max(h);
            let size = ((w * scale).round().max(1.0) as u32, (h * scale).round().max(1.0) as u32);
            (RgbImage::from_pixel(size.0, size.1, image::Rgb([235, 235, 235])), (w, h))
        }
    };
    let mut canvas = canvas;
    if let Some((pred, reference)) = boxes {
        draw_boxes(&mut canvas, frame, &[(reference, REF_COLOUR), (pred, PRED_COLOUR)])?;
    }
    super::png::encode_rgb(canvas.as_raw(), canvas.width(), canvas.height()).map(Some)
}

fn decode_image(encoded: &str) -> Result<DynamicImage> {
    let payload = match encoded.strip_prefix("data:") {
        Some(uri) => uri.split_once(',').map(|(_, data)| data).ok_or_else(|| anyhow!("malformed data URI"))?,
        None => encoded,
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(payload.trim()).context("\"image\" is not base64")?;
    if !(bytes.starts_with(b"\x89PNG") || bytes.starts_with(&[0xff, 0xd8])) {
        bail!("\"image\" is neither PNG nor JPEG");
    }
    image::load_from_memory(&bytes).context("decoding \"image\"")
}

/// The thumbnail as RGB with its longest side [`THUMB`] pixels, so every card
/// has the same size and boxes are drawn sharply at display resolution.
fn fit(img: DynamicImage) -> RgbImage {
    img.resize(THUMB, THUMB, FilterType::Triangle).to_rgb8()
}

/// Draws boxes given in the `frame` (original image pixels) onto `canvas`.
fn draw_boxes(canvas: &mut RgbImage, frame: (f32, f32), boxes: &[([f32; 4], RGBColor)]) -> Result<()> {
    let (w, h) = canvas.dimensions();
    let (sx, sy) = (w as f32 / frame.0, h as f32 / frame.1);
    let root = BitMapBackend::with_buffer(canvas.as_mut(), (w, h)).into_drawing_area();
    for &(b, colour) in boxes {
        if b.iter().any(|c| !c.is_finite()) {
            continue;
        }
        let corner = |x: f32, y: f32| ((x * sx).round() as i32, (y * sy).round() as i32);
        let rect = Rectangle::new([corner(b[0], b[1]), corner(b[2], b[3])], colour.stroke_width(3));
        root.draw(&rect).map_err(|e| anyhow!("drawing a box: {e:?}"))?;
    }
    root.present().map_err(|e| anyhow!("drawing a box: {e:?}"))
}
