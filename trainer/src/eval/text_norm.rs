//! The text clean-up the reference applies to captions before CIDEr-D
//! (spec §4.1, §2.2): every ASCII punctuation character of Python's
//! `string.punctuation` is deleted (not replaced by a space), then the string
//! is stripped; references arrive joined by `&&` and are split first.
//! Whitespace follows Python's `str.strip`/`str.split`, which also treat the
//! ASCII separators U+001C..U+001F as space; Rust's `char::is_whitespace`
//! does not, so they are added here.

/// Python's `string.punctuation`.
pub const PUNCTUATION: &str = r##"!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~"##;

/// Separator between the references of one image in a decoded validation target.
pub const REFERENCE_SEPARATOR: &str = "&&";

/// Whether Python's `str.isspace` holds for `c` (what `split()`/`strip()` use).
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()`.
pub fn python_strip(s: &str) -> &str {
    s.trim_matches(is_python_space)
}

/// Python's `s.split()`: runs of whitespace separate words; no empty words.
pub fn python_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_python_space).filter(|w| !w.is_empty())
}

/// A hypothesis or one reference as the reference scores it: punctuation
/// deleted, then stripped.
pub fn normalize_caption(text: &str) -> String {
    let kept: String = text.chars().filter(|c| !PUNCTUATION.contains(*c)).collect();
    python_strip(&kept).to_string()
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
        assert_eq!(python_split(" a\u{1d}b \u{a0}c ").collect::<Vec<_>>(), vec!["a", "b", "c"]);
    }
}
