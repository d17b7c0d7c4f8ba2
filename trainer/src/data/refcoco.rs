//! The grounding task's samples: RefCOCO, RefCOCO+ and RefCOCOg (spec §2.3).

use super::boxes::{normalise_box, parse_region_coord, quantize, resize_ratios};
use super::bpe::Tokenizer;
use super::text::is_py_space;
use super::tsv::Row;
use super::{EvalRef, Preprocess, Sample};
use anyhow::Result;

/// The reference's `pre_caption`: lower-case, leading `,.!?*#:;~` removed,
/// `-` and `/` to spaces, `<person>` to `person`, runs of two or more
/// whitespace characters to one space, stripped, at most `max_words` words.
pub fn pre_caption(text: &str, max_words: usize) -> String {
    let lower = text.to_lowercase();
    let replaced = lower
        .trim_start_matches([',', '.', '!', '?', '*', '#', ':', ';', '~'])
        .replace(['-', '/'], " ")
        .replace("<person>", "person");
    // `re.sub(r"\s{2,}", " ")`: a single whitespace character (a tab) survives.
    let mut collapsed = String::with_capacity(replaced.len());
    let chars: Vec<char> = replaced.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let run = chars[i..].iter().take_while(|&&c| is_py_space(c)).count();
        if run >= 2 {
            collapsed.push(' ');
            i += run;
        } else {
            collapsed.push(chars[i]);
            i += 1;
        }
    }
    let stripped = collapsed.trim_end_matches('\n').trim_matches(' ');
    let words: Vec<&str> = stripped.split(' ').collect();
    if words.len() > max_words {
        words[..max_words].join(" ")
    } else {
        stripped.to_string()
    }
}

/// The source text for a cleaned expression.
pub fn prompt(expression: &str) -> String {
    format!(" which region does the text \" {expression} \" describe?")
}

/// Builds a sample from a row unpacked as `(uniq_id, image, text, region_coord)`.
pub fn build(row: &Row, tok: &Tokenizer, pre: &Preprocess) -> Result<Sample> {
    let region = parse_region_coord(&row.fields[3]).map_err(|e| row.bad(3, "region-coord", e.to_string()))?;
    let decoded = pre.decode(row, 1)?;
    let (w, h) = decoded.dimensions();
    let image = pre.resize(&decoded);
    let (w_ratio, h_ratio) = resize_ratios(w, h, pre.patch_image_size);
    let norm = normalise_box(region, w_ratio, h_ratio, pre.max_image_size);
    let dict = tok.dictionary();
    let bins: Vec<i64> = norm
        .iter()
        .map(|&c| {
            let b = quantize(c, pre.num_bins);
            // A coordinate outside the image has no bin token: `<unk>`, as in the reference.
            if (0..pre.num_bins as i64).contains(&b) {
                dict.bin_index(b as usize)
            } else {
                dict.unk()
            }
        })
        .collect();
    let src = tok.encode(&prompt(&pre_caption(&row.fields[2], pre.max_src_length)))?;
    Ok(Sample::new(
        row.fields[0].clone(),
        [vec![dict.bos()], src, vec![dict.eos()]].concat(),
        bins,
        dict,
        image,
        EvalRef::Region { region_coord: region, w_resize_ratio: w_ratio, h_resize_ratio: h_ratio },
    ))
}
