//! Pillow's bicubic resize (`Image.resize(size, BICUBIC)`), reproduced bit
//! for bit: the separable fixed-point resampler of Pillow's `Resample.c`
//! with Pillow 13's pass order (see the oracle README, "PIL bicubic").
//!
//! Per output pixel the filter (a = −0.5) spans `2·max(in/out, 1)` input
//! pixels around the centre `(x + 0.5)·in/out`, so downscaling is
//! antialiased. Weights are normalised in f64, turned into 22-bit fixed
//! point, and every pass rounds and clips to u8 — which makes the pass
//! order matter.

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point weights of one pass: for output index `o`, input pixels
/// `start[o] .. start[o] + weights[o].len()`.
struct Coeffs {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for o in 0..out_size {
        let center = (o as f64 + 0.5) * scale;
        // `as i64` truncates toward zero, as C's `(int)` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let w: Vec<f64> = (xmin..xmax)
            .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
            .collect();
        let total: f64 = w.iter().sum();
        let fixed = w
            .iter()
            .map(|&v| {
                let v = if total != 0.0 { v / total } else { v };
                let scaled = v * (1u32 << PRECISION_BITS) as f64;
                // Round half away from zero, then truncate, as Pillow does.
                (if v < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
            })
            .collect();
        start.push(xmin);
        weights.push(fixed);
    }
    Coeffs { start, weights }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resamples along one axis. `horizontal` picks the axis; the other one is kept.
fn pass(src: &RgbImage, out_len: usize, horizontal: bool) -> RgbImage {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let (out_w, out_h) = if horizontal { (out_len, h) } else { (w, out_len) };
    let c = coeffs(if horizontal { w } else { h }, out_len);
    let input = src.as_raw();
    let mut out = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        for x in 0..out_w {
            let (o, fixed) = if horizontal { (x, y) } else { (y, x) };
            let ws = &c.weights[o];
            let first = c.start[o];
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (k, &wk) in ws.iter().enumerate() {
                let (sx, sy) = if horizontal { (first + k, fixed) } else { (fixed, first + k) };
                let p = (sy * w + sx) * 3;
                for ch in 0..3 {
                    acc[ch] += input[p + ch] as i64 * wk as i64;
                }
            }
            let q = (y * out_w + x) * 3;
            for ch in 0..3 {
                out[q + ch] = clip8(acc[ch]);
            }
        }
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, out).expect("buffer sized for the image")
}

/// `img.resize((out_w, out_h), Image.BICUBIC)` as Pillow 13 computes it.
/// Same size returns a copy (Pillow and torchvision do not resample then).
pub fn resize_bicubic(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let need_h = out_w != w;
    let need_v = out_h != h;
    // Pillow 13 runs the vertical pass first when the width grows and the height shrinks.
    let vertical_first = out_w > w && out_h < h;
    match (need_h, need_v) {
        (false, false) => img.clone(),
        (true, false) => pass(img, out_w as usize, true),
        (false, true) => pass(img, out_h as usize, false),
        (true, true) if vertical_first => pass(&pass(img, out_h as usize, false), out_w as usize, true),
        (true, true) => pass(&pass(img, out_w as usize, true), out_h as usize, false),
    }
}
