//! An image file to the TSV's image field: read, checked, optionally
//! re-encoded, base64 (standard alphabet, as the reference's README writes it).

use crate::data::image::{decode_rgb, dimensions, libjpeg};
use anyhow::{Context, Result};
use base64::Engine;
use std::path::Path;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reencode {
    /// Baseline JPEG (libjpeg-turbo, 4:2:0), quality --jpeg-quality.
    Jpeg,
    /// PNG (lossless).
    Png,
}

/// How each image is turned into its field.
#[derive(Clone, Copy, Debug)]
pub struct ImageOptions {
    pub reencode: Option<Reencode>,
    pub jpeg_quality: u8,
    /// Decode every image completely instead of reading its header only.
    pub verify: bool,
}

/// An image field and the size of the image it holds.
pub struct Encoded {
    pub base64: String,
    pub width: u32,
    pub height: u32,
}

/// Reads `path` and makes its field. The default keeps the original bytes
/// and reads only the header (size, and that it is an image the loader opens).
pub fn encode(path: &Path, opts: &ImageOptions) -> Result<Encoded> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let decode =
        || decode_rgb(&bytes).with_context(|| format!("{} is not an image the loader can open", path.display()));
    let (bytes, width, height) = match opts.reencode {
        Some(format) => {
            let rgb = decode()?;
            let (w, h) = rgb.dimensions();
            (reencode(&rgb, format, opts.jpeg_quality)?, w, h)
        }
        None if opts.verify => {
            let (w, h) = decode()?.dimensions();
            (bytes, w, h)
        }
        None => {
            let (w, h) = dimensions(&bytes)
                .with_context(|| format!("{} is not an image the loader can open", path.display()))?;
            (bytes, w, h)
        }
    };
    Ok(Encoded { base64: base64::engine::general_purpose::STANDARD.encode(&bytes), width, height })
}

fn reencode(rgb: &image::RgbImage, format: Reencode, quality: u8) -> Result<Vec<u8>> {
    match format {
        Reencode::Png => {
            let mut out = std::io::Cursor::new(Vec::new());
            rgb.write_to(&mut out, image::ImageFormat::Png).context("encoding a PNG")?;
            Ok(out.into_inner())
        }
        Reencode::Jpeg => libjpeg("encoding a JPEG", || {
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            // libjpeg-turbo's settings (as PIL saves), not mozjpeg's slow trellis/progressive defaults.
            c.set_fastest_defaults();
            c.set_size(rgb.width() as usize, rgb.height() as usize);
            c.set_quality(quality as f32);
            let mut c = c.start_compress(Vec::new())?;
            c.write_scanlines(rgb.as_raw())?;
            c.finish()
        }),
    }
}
