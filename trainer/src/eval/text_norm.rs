//! The text clean-up the reference applies to captions before CIDEr-D
//! (spec §4.1, §2.2): every ASCII punctuation character of Python's
//! `string.punctuation` is deleted (not replaced by a space), then the string
//! is stripped; references arrive joined by `&&` and are split first.
//! Whitespace follows Python's `str.strip`/`str.split` (`data::text`).

use crate::data::text::{py_strip, remove_punctuation};

/// Separator between the references of one image in a decoded validation target.
pub const REFERENCE_SEPARATOR: &str = "&&";

/// A hypothesis or one reference as the reference scores it: punctuation
/// deleted, then stripped.
pub fn normalize_caption(text: &str) -> String {
    py_strip(&remove_punctuation(text)).to_string()
}

/// The references of one image from its decoded validation target
/// (`ref1&&ref2&&…`), each normalised.
pub fn split_references(decoded_target: &str) -> Vec<String> {
    decoded_target.split(REFERENCE_SEPARATOR).map(normalize_caption).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_punctuation_without_inserting_spaces() {
        assert_eq!(normalize_caption(" A t-shirt, don't!  "), "A tshirt dont");
        assert_eq!(normalize_caption("a\u{1f}b.\u{1c}"), "a\u{1f}b");
    }

    #[test]
    fn splits_references_on_double_ampersand() {
        assert_eq!(split_references("a dog.&& a cat &&"), vec!["a dog", "a cat", ""]);
    }

    #[test]
    fn python_whitespace_rules() {
        assert_eq!(crate::data::text::py_split(" a\u{1d}b \u{a0}c ").collect::<Vec<_>>(), vec!["a", "b", "c"]);
    }
}
