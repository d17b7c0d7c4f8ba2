//! RefCOCO-style grounding metric as the reference's validation computes it
//! (spec §4.2, §2.3): four generated bin tokens → a box in original-image
//! pixels, IoU without the +1 pixel convention, and a hit when IoU ≥ 0.5 with
//! a strictly positive intersection width and height. All box arithmetic is
//! float32 in the reference's order. Under `--fp16` the reference sees the
//! resize ratios and the reference box rounded to float16; [`BoxDecoder`]
//! reproduces that when `fp16` is set.

use half::f16;

/// `[x0, y0, x1, y1]` in original-image pixels.
pub type BoxXyxy = [f32; 4];

/// IoU threshold of Acc@0.5.
pub const HIT_THRESHOLD: f32 = 0.5;

/// Turns generated bin indices into boxes and prepares reference boxes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxDecoder {
    /// `--num-bins` (1000).
    pub num_bins: i64,
    /// `--max-image-size` (512).
    pub max_image_size: f32,
    /// Whether the run uses `--fp16` (ratios and reference boxes rounded to float16).
    pub fp16: bool,
}

impl Default for BoxDecoder {
    fn default() -> Self {
        BoxDecoder { num_bins: 1000, max_image_size: 512.0, fp16: false }
    }
}

impl BoxDecoder {
    /// The dataset's `w_resize_ratio` / `h_resize_ratio`: `patch_image_size /
    /// original side`, computed in double and stored as float32.
    pub fn resize_ratio(patch_image_size: u32, original_side: u32) -> f32 {
        (f64::from(patch_image_size) / f64::from(original_side)) as f32
    }

    /// Bin index of a generated token: `token − (dict_len − num_bins)`.
    /// Not checked: a non-bin token gives an out-of-range bin, as in the reference.
    pub fn bin_of_token(&self, token: i64, dict_len: i64) -> i64 {
        token - (dict_len - self.num_bins)
    }

    /// Box of four bin indices: `b / (num_bins − 1) · max_image_size`, then x
    /// divided by the width ratio and y by the height ratio (float32 dataset values;
    /// the fp16 rounding is applied here when `fp16` is set).
    pub fn decode(&self, bins: [i64; 4], w_resize_ratio: f32, h_resize_ratio: f32) -> BoxXyxy {
        let (w, h) = (self.precision(w_resize_ratio), self.precision(h_resize_ratio));
        let denominator = (self.num_bins - 1) as f32;
        let scaled = bins.map(|b| b as f32 / denominator * self.max_image_size);
        [scaled[0] / w, scaled[1] / h, scaled[2] / w, scaled[3] / h]
    }

    /// The reference box as the metric sees it: the TSV's float32 box,
    /// float16-rounded under `--fp16`.
    pub fn reference_box(&self, region_coord: BoxXyxy) -> BoxXyxy {
        region_coord.map(|c| self.precision(c))
    }

    fn precision(&self, x: f32) -> f32 {
        if self.fp16 {
            f16::from_f32(x).to_f32()
        } else {
            x
        }
    }
}

/// IoU of a predicted and a reference box, with the intersection's signed
/// width and height (not clamped, as in the reference).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overlap {
    pub iou: f32,
    pub inter_w: f32,
    pub inter_h: f32,
}

impl Overlap {
    /// Acc@0.5's hit: IoU ≥ 0.5 and a strictly positive intersection.
    pub fn is_hit(&self) -> bool {
        self.iou >= HIT_THRESHOLD && self.inter_w > 0.0 && self.inter_h > 0.0
    }
}

/// `inter / (area_p + area_t − inter + 1e-6)` with unclamped intersection
/// sides, in float32. Degenerate or inverted boxes are not rejected; they
/// fail `is_hit` through the strict width/height test or a small IoU.
pub fn overlap(pred: BoxXyxy, target: BoxXyxy) -> Overlap {
    let ix0 = pred[0].max(target[0]);
    let iy0 = pred[1].max(target[1]);
    let ix1 = pred[2].min(target[2]);
    let iy1 = pred[3].min(target[3]);
    let area_pred = (pred[2] - pred[0]) * (pred[3] - pred[1]);
    let area_target = (target[2] - target[0]) * (target[3] - target[1]);
    let inter_w = ix1 - ix0;
    let inter_h = iy1 - iy0;
    let inter = inter_w * inter_h;
    let iou = inter / (area_pred + area_target - inter + 1e-6);
    Overlap { iou, inter_w, inter_h }
}
