//! The caption task's samples (spec §2.2).

use super::bpe::Tokenizer;
use super::text::{collapse_whitespace, py_split, py_strip, remove_punctuation};
use super::tsv::Row;
use super::{EvalRef, Preprocess, Sample, Split};
use anyhow::Result;

/// The GPT-2 BPE prompt of the reference (leading space included).
pub const PROMPT: &str = " what does the image describe?";

/// Training text: punctuation deleted (not replaced), then the first
/// `max_words` whitespace-separated words joined by single spaces.
pub fn clean_train_caption(text: &str, max_words: usize) -> String {
    let cleaned = remove_punctuation(text);
    py_split(py_strip(&cleaned)).take(max_words).collect::<Vec<_>>().join(" ")
}

/// Validation text: whitespace collapsed, split on `&&`, each reference
/// without punctuation and stripped. Empty references are kept, as in the reference.
pub fn clean_valid_captions(text: &str) -> Vec<String> {
    collapse_whitespace(text).split("&&").map(|c| py_strip(&remove_punctuation(c)).to_string()).collect()
}

/// Builds sample from a row unpacked as `(uniq_id, image, caption)`.
pub fn build(row: &Row, split: Split, tok: &Tokenizer, pre: &Preprocess) -> Result<Sample> {
    let image = pre.image(row, 1)?;
    let (text, refs) = match split {
        Split::Train => {
            let c = clean_train_caption(&row.fields[2], pre.max_tgt_length);
            (c.clone(), vec![c])
        }
        Split::Valid => {
            let refs = clean_valid_captions(&row.fields[2]);
            (refs.join("&&"), refs)
        }
    };
    let dict = tok.dictionary();
    let prompt = tok.encode(PROMPT)?;
    let tgt = tok.encode(&format!(" {text}"))?;
    Ok(Sample::new(
        row.fields[0].clone(),
        [vec![dict.bos()], prompt, vec![dict.eos()]].concat(),
        tgt,
        dict,
        image,
        EvalRef::Caption { captions: refs },
    ))
}
