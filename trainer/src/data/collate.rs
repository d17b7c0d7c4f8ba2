//! Samples to a padded batch (spec §2.4): right padding with `<pad>`,
//! images stacked and normalised.

use super::dictionary::Dictionary;
use super::image::Normalize;
use super::{Batch, Sample};
use crate::model::NetInput;
use tch::{Device, Kind, Tensor};

/// Right-pads `rows` with `pad` to the longest: an i64 `[B, T]` tensor.
pub fn pad_tokens(rows: &[&[i64]], pad: i64) -> Tensor {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut flat = Vec::with_capacity(rows.len() * width);
    for r in rows {
        flat.extend_from_slice(r);
        flat.extend(std::iter::repeat_n(pad, width - r.len()));
    }
    Tensor::from_slice(&flat).view([rows.len() as i64, width as i64])
}

/// Collates non-empty `samples` into the model's inputs and the targets.
pub fn collate(samples: &[Sample], norm: &Normalize) -> Batch {
    assert!(!samples.is_empty(), "collate needs at least one sample; an empty micro-batch is None");
    let pad = Dictionary::PAD;
    let src: Vec<&[i64]> = samples.iter().map(|s| s.source.as_slice()).collect();
    let tgt: Vec<&[i64]> = samples.iter().map(|s| s.target.as_slice()).collect();
    let prev: Vec<&[i64]> = samples.iter().map(|s| s.prev_output_tokens.as_slice()).collect();
    let src_lengths: Vec<i64> = samples.iter().map(|s| s.source.iter().filter(|&&t| t != pad).count() as i64).collect();
    let ntokens = samples.iter().map(|s| s.target.iter().filter(|&&t| t != pad).count() as i64).sum();

    let (w, h) = samples[0].image.dimensions();
    let plane = 3 * (w * h) as usize;
    let table = norm.table();
    let b = samples.len() as i64;
    let patch_images = Tensor::empty([b, 3, h as i64, w as i64], (Kind::Float, Device::Cpu));
    // SAFETY: `patch_images` is a new contiguous f32 CPU tensor of exactly
    // `samples.len() * plane` elements that nothing else references yet;
    // writing into it directly saves copying a batch of images (tens of MB).
    let pixels = unsafe { std::slice::from_raw_parts_mut(patch_images.data_ptr() as *mut f32, samples.len() * plane) };
    for (s, out) in samples.iter().zip(pixels.chunks_mut(plane)) {
        assert_eq!(s.image.dimensions(), (w, h), "all images of a batch have the patch size");
        norm.write_chw(&table, &s.image, out);
    }
    Batch {
        net_input: NetInput {
            src_tokens: pad_tokens(&src, pad),
            src_lengths: Tensor::from_slice(&src_lengths),
            patch_images,
            patch_masks: Tensor::from_slice(&vec![true; samples.len()]),
            prev_output_tokens: pad_tokens(&prev, pad),
        },
        target: pad_tokens(&tgt, pad),
        ntokens,
        nsentences: b,
        ids: samples.iter().map(|s| s.id.clone()).collect(),
        refs: samples.iter().map(|s| s.eval_ref.clone()).collect(),
    }
}
