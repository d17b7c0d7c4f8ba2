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
    base64::engine::general_purpose::STANDARD.decode(standard.as_bytes()).map_err(|e| anyhow!("invalid base64 ({e})"))
}

/// Decodes JPEG (libjpeg-turbo), PNG and the other formats the `image` crate reads, to
/// 8-bit RGB: grey is replicated, alpha dropped without compositing (as PIL).
/// No EXIF orientation is applied (neither does the reference).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return decode_jpeg(bytes);
    }
    let img = image::load_from_memory(bytes).map_err(|e| anyhow!("the image does not decode ({e})"))?;
    Ok(img.to_rgb8())
}

/// JPEG through libjpeg-turbo's decoder (vendored by `mozjpeg`): the
/// reference's PIL decodes with libjpeg-turbo too (islow IDCT, fancy
/// upsampling), so the pixels are the same. A truncated file only warns and
/// decodes, as PIL's `LOAD_TRUNCATED_IMAGES` allows.
fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage> {
    use mozjpeg::decompress::Format;
    let (w, h, rgb) = libjpeg("the JPEG image does not decode", || {
        let image = mozjpeg::Decompress::new_mem(bytes)?.image()?;
        Ok(match image {
            Format::RGB(mut d) => (d.width(), d.height(), d.read_scanlines::<u8>()?),
            Format::Gray(mut d) => {
                let grey = d.read_scanlines::<u8>()?;
                (d.width(), d.height(), grey.iter().flat_map(|&g| [g, g, g]).collect())
            }
            // Adobe CMYK is stored inverted; PIL reads it back, then converts
            // each channel to 255 − min(255, C + K).
            Format::CMYK(mut d) => {
                let raw = d.read_scanlines::<u8>()?;
                let rgb = raw
                    .chunks_exact(4)
                    .flat_map(|p| {
                        let k = 255 - p[3] as u16;
                        [0, 1, 2].map(|c| 255 - (255 - p[c] as u16 + k).min(255) as u8)
                    })
                    .collect();
                (d.width(), d.height(), rgb)
            }
        })
    })?;
    RgbImage::from_raw(w as u32, h as u32, rgb)
        .ok_or_else(|| anyhow!("the JPEG image's pixel count does not match its size"))
}

/// Runs a libjpeg call. libjpeg reports fatal errors by unwinding (without
/// the panic hook); that, like an I/O error, becomes `what (cause)`.
pub(crate) fn libjpeg<T>(what: &str, f: impl FnOnce() -> std::io::Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(anyhow!("{what} ({e})")),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg error".into());
            Err(anyhow!("{what} ({msg})"))
        }
    }
}

/// Width and height from the image's header, without decoding the pixels:
/// an error means a file that [`decode_rgb`] would not open either.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    let (w, h) = if bytes.starts_with(&[0xFF, 0xD8]) {
        let (w, h) = libjpeg("the JPEG header does not decode", || {
            let d = mozjpeg::Decompress::new_mem(bytes)?;
            Ok((d.width(), d.height()))
        })?;
        (w as u32, h as u32)
    } else {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| anyhow!("reading the image header ({e})"))?
            .into_dimensions()
            .map_err(|e| anyhow!("the image does not decode ({e})"))?
    };
    if w == 0 || h == 0 {
        return Err(anyhow!("the image is empty ({w}×{h} pixels)"));
    }
    Ok((w, h))
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
        std::array::from_fn(|c| std::array::from_fn(|k| (k as f32 / 255.0 - self.mean[c]) / self.std[c]))
    }

    /// Writes `img` as CHW floats into `out` (length 3·h·w).
    pub fn write_chw(&self, table: &[[f32; 256]; 3], img: &RgbImage, out: &mut [f32]) {
        let plane = (img.width() * img.height()) as usize;
        assert_eq!(out.len(), 3 * plane, "output buffer does not fit the image");
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (((px, r), g), b) in img.as_raw().chunks_exact(3).zip(r).zip(g).zip(b) {
            *r = table[0][px[0] as usize];
            *g = table[1][px[1] as usize];
            *b = table[2][px[2] as usize];
        }
    }
}
