//! What the data benchmarks share: realistic 480×480 JPEGs and the timing rule.
use image::{Rgb, RgbImage};
use std::time::Instant;

/// A 480×480 picture with smooth gradients, edges and noise, so the JPEG has realistic content.
pub fn picture(seed: u32) -> RgbImage {
    RgbImage::from_fn(480, 480, |x, y| {
        let h = (x.wrapping_mul(73856093) ^ y.wrapping_mul(19349663) ^ seed.wrapping_mul(83492791)) % 23;
        let band = if (x / 40 + y / 60 + seed).is_multiple_of(3) { 60 } else { 0 };
        Rgb([
            ((x * 255 / 480) as u8).saturating_add(h as u8),
            ((y * 255 / 480) as u8).saturating_sub(h as u8).saturating_add(band),
            (((x + y + seed * 7) % 256) as u8) / 2 + band,
        ])
    })
}

/// Baseline JPEG, quality 90, 4:2:0, as libjpeg-turbo (and PIL) write it.
pub fn encode_jpeg(img: &RgbImage) -> Vec<u8> {
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_fastest_defaults();
    c.set_size(img.width() as usize, img.height() as usize);
    c.set_quality(90.0);
    let mut c = c.start_compress(Vec::new()).expect("JPEG compression starts");
    c.write_scanlines(img.as_raw()).expect("JPEG encodes");
    c.finish().expect("JPEG finishes")
}

/// Best of `reps` runs of `f`, in milliseconds: on a shared machine the minimum is the least disturbed figure.
pub fn best_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}
