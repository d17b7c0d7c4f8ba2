//! PNG encoding and data URIs for the self-contained page.

use anyhow::{Context, Result};
use base64::Engine;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

/// Encodes 8-bit RGB pixels; best compression keeps a page of charts small.
pub fn encode_rgb(pixels: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::Adaptive)
        .write_image(pixels, width, height, ExtendedColorType::Rgb8)
        .context("encoding a PNG")?;
    Ok(out)
}

pub fn data_uri(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
}
