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
        let w: Vec<f64> = (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) / filterscale)).collect();
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

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Sums of u8 × 22-bit weights stay far below 2^31 (weights sum to 2^22), so
/// i32 accumulates exactly, as in Pillow.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn horizontal(src: &RgbImage, out_w: usize) -> RgbImage {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let c = coeffs(w, out_w);
    let mut out = vec![0u8; out_w * h * 3];
    for (in_row, out_row) in src.as_raw().chunks_exact(w * 3).zip(out.chunks_exact_mut(out_w * 3)) {
        for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
            let taps = &in_row[c.start[x] * 3..(c.start[x] + c.weights[x].len()) * 3];
            let mut acc = [HALF; 3];
            for (p, &wk) in taps.chunks_exact(3).zip(&c.weights[x]) {
                acc[0] += p[0] as i32 * wk;
                acc[1] += p[1] as i32 * wk;
                acc[2] += p[2] as i32 * wk;
            }
            px.copy_from_slice(&acc.map(clip8));
        }
    }
    RgbImage::from_raw(out_w as u32, h as u32, out).expect("buffer sized for the image")
}

fn vertical(src: &RgbImage, out_h: usize) -> RgbImage {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let c = coeffs(h, out_h);
    let row_len = w * 3;
    let input = src.as_raw();
    let mut out = vec![0u8; out_h * row_len];
    let mut acc = vec![0i32; row_len];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        acc.fill(HALF);
        for (k, &wk) in c.weights[y].iter().enumerate() {
            let row = &input[(c.start[y] + k) * row_len..][..row_len];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * wk;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage::from_raw(w as u32, out_h as u32, out).expect("buffer sized for the image")
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
        (true, false) => horizontal(img, out_w as usize),
        (false, true) => vertical(img, out_h as usize),
        (true, true) if vertical_first => horizontal(&vertical(img, out_h as usize), out_w as usize),
        (true, true) => vertical(&horizontal(img, out_w as usize), out_h as usize),
    }
}
