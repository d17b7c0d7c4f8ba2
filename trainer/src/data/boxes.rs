//! Boxes of the grounding tasks: parsing `x0,y0,x1,y1`, the resize
//! transform, quantisation to `<bin_i>` and back, all in float32 as the
//! reference computes them (spec §2.3, §4.2).

use anyhow::{bail, Result};

/// Parses a region-coord field as Python's `float()` then a float32 tensor would.
pub fn parse_region_coord(field: &str) -> Result<[f32; 4]> {
    let parts: Vec<&str> = field.trim().split(',').collect();
    if parts.len() != 4 {
        bail!("expected four comma-separated numbers x0,y0,x1,y1, found {field:?}");
    }
    let mut b = [0f32; 4];
    for (k, p) in parts.iter().enumerate() {
        let v: f64 = p.trim().parse().map_err(|_| anyhow::anyhow!("{p:?} in {field:?} is not a number"))?;
        if !v.is_finite() {
            bail!("{p:?} in {field:?} is not finite");
        }
        b[k] = v as f32;
    }
    if b[2] < b[0] || b[3] < b[1] {
        bail!("{field:?} is not a box: x1 < x0 or y1 < y0");
    }
    Ok(b)
}

/// The resize ratios `P/w`, `P/h`: computed in f64, stored as f32.
pub fn resize_ratios(w: u32, h: u32, patch_image_size: u32) -> (f32, f32) {
    ((patch_image_size as f64 / w as f64) as f32, (patch_image_size as f64 / h as f64) as f32)
}

/// The box after the resize, divided by `max_image_size` (the reference's
/// `Normalize`): coordinates in [0, 1] when the box lies in the image and
/// `patch_image_size == max_image_size`.
pub fn normalise_box(b: [f32; 4], w_ratio: f32, h_ratio: f32, max_image_size: u32) -> [f32; 4] {
    let m = max_image_size as f32;
    [b[0] * w_ratio / m, b[1] * h_ratio / m, b[2] * w_ratio / m, b[3] * h_ratio / m]
}

/// The bin of a normalised coordinate: `round_half_even(c · (num_bins − 1))`
/// in f32. Not clamped: outside the image it leaves 0..num_bins, which the
/// dictionary maps to `<unk>` as in the reference.
pub fn quantize(c: f32, num_bins: usize) -> i64 {
    (c * (num_bins - 1) as f32).round_ties_even() as i64
}

/// The evaluation's inverse: bins to a box in original-image pixels,
/// `b/(num_bins−1)·max_image_size / ratio`, in f32.
pub fn bins_to_box(bins: [i64; 4], num_bins: usize, max_image_size: u32, w_ratio: f32, h_ratio: f32) -> [f32; 4] {
    let scale = |b: i64| b as f32 / (num_bins - 1) as f32 * max_image_size as f32;
    [scale(bins[0]) / w_ratio, scale(bins[1]) / h_ratio, scale(bins[2]) / w_ratio, scale(bins[3]) / h_ratio]
}
