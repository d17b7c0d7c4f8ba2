//! Image fields: base64 (either alphabet, as Python's `urlsafe_b64decode`
//! accepts), decoding of the encoded file, RGB conversion as PIL's
//! `convert("RGB")` does, and normalisation to the model's input (spec §1.3, §2.2).

use anyhow::{anyhow, Result};
use base64::Engine;
use image::RgbImage;

/// Decodes the base64 of an image field. `-`/`_` are read as `+`/`/`, so
/// standard and URL-safe encodings both work; padding must be correct.
pub fn decode_base64(field: &str) -> Result<Vec<u8>> {
    let standard: String = field
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(standard.as_bytes())
        .map_err(|e| anyhow!("invalid base64 ({e})"))
}

/// Decodes JPEG, PNG and the other formats the `image` crate reads, to
/// 8-bit RGB: grey is replicated, alpha dropped without compositing (as PIL).
/// No EXIF orientation is applied (neither does the reference).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return decode_jpeg(bytes);
    }
    let img = image::load_from_memory(bytes).map_err(|e| anyhow!("the image does not decode ({e})"))?;
    Ok(img.to_rgb8())
}

/// JPEG through `jpeg-decoder`, whose fancy chroma upsampling follows
/// libjpeg's (the reference decodes with libjpeg-turbo), so pixels agree
/// within ±1.
fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage> {
    use jpeg_decoder::PixelFormat;
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    let pixels = decoder.decode().map_err(|e| anyhow!("the JPEG image does not decode ({e})"))?;
    let info = decoder.info().ok_or_else(|| anyhow!("the JPEG image has no frame header"))?;
    let rgb: Vec<u8> = match info.pixel_format {
        PixelFormat::RGB24 => pixels,
        PixelFormat::L8 => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        PixelFormat::L16 => pixels.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
        // PIL's CMYK → RGB: each channel 255 − min(255, C + K).
        PixelFormat::CMYK32 => pixels
            .chunks_exact(4)
            .flat_map(|p| {
                let k = p[3] as u16;
                [0, 1, 2].map(|c| 255 - (p[c] as u16 + k).min(255) as u8)
            })
            .collect(),
    };
    RgbImage::from_raw(info.width as u32, info.height as u32, rgb)
        .ok_or_else(|| anyhow!("the JPEG image's pixel count does not match its size"))
}

/// Per-channel mean and std of the model's input normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    /// Mean = std = 0.5 (pixels to [-1, 1]) unless `--imagenet-default-mean-and-std`.
    pub fn new(imagenet: bool) -> Self {
        if imagenet {
            Normalize { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
        } else {
            Normalize { mean: [0.5; 3], std: [0.5; 3] }
        }
    }

    /// For each channel the 256 values `(k/255 − mean)/std`, computed in f32
    /// in the order ToTensor + Normalize use, so results are bit-exact.
    pub fn table(&self) -> [[f32; 256]; 3] {
        let mut t = [[0f32; 256]; 3];
        for c in 0..3 {
            for k in 0..256 {
                t[c][k] = (k as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        t
    }

    /// Writes `img` as CHW floats into `out` (length 3·h·w).
    pub fn write_chw(&self, table: &[[f32; 256]; 3], img: &RgbImage, out: &mut [f32]) {
        let plane = (img.width() * img.height()) as usize;
        assert_eq!(out.len(), 3 * plane, "output buffer does not fit the image");
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = table[c][px.0[c] as usize];
            }
        }
    }
}
