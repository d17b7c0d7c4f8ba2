//! Python string semantics the reference's text cleaning relies on
//! (`str.split()`, `str.strip()`, `string.punctuation`), so that cleaned
//! captions and expressions match byte for byte.

/// Python's `str.isspace`: Unicode White_Space plus the ASCII separators
/// U+001C..U+001F, which Rust's `char::is_whitespace` leaves out.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` with no argument.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// Python's `str.strip()` with no argument.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// `s.translate(str.maketrans('', '', string.punctuation))`: ASCII punctuation deleted.
pub fn remove_punctuation(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_punctuation()).collect()
}

/// `' '.join(s.split())`.
pub fn collapse_whitespace(s: &str) -> String {
    py_split(s).collect::<Vec<_>>().join(" ")
}
