//! Counting the 1..4-grams of a sentence, the way the reference's CIDEr-D
//! "cooks" a sentence: words are Python-whitespace-separated, and an n-gram is
//! keyed by its words joined with single spaces (the key format of the cached
//! document-frequency file too). Entries keep first-occurrence order, all
//! unigrams first, then bigrams, …, as the reference's dict iterates them, so
//! sums over n-grams add in the reference's order.

use crate::data::text::py_split;
use std::collections::HashMap;

/// Highest n-gram order CIDEr-D uses.
pub const MAX_ORDER: usize = 4;

/// Term counts of every n-gram of orders 1..=[`MAX_ORDER`] in one sentence.
#[derive(Debug, Clone, Default)]
pub struct NgramCounts {
    /// (n-gram key, order − 1, raw count), in first-occurrence order.
    entries: Vec<(String, usize, u32)>,
}

impl NgramCounts {
    pub fn of(sentence: &str) -> Self {
        let words: Vec<&str> = py_split(sentence).collect();
        let mut entries: Vec<(String, usize, u32)> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        for order in 1..=MAX_ORDER {
            for window in words.windows(order) {
                let key = window.join(" ");
                match position.get(&key) {
                    Some(&i) => entries[i].2 += 1,
                    None => {
                        position.insert(key.clone(), entries.len());
                        entries.push((key, order - 1, 1));
                    }
                }
            }
        }
        NgramCounts { entries }
    }

    /// (n-gram key, order − 1, count) in first-occurrence order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize, u32)> {
        self.entries.iter().map(|(k, o, c)| (k.as_str(), *o, *c))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The order (number of words) of an n-gram key, or `None` when the key is not
/// 1..=4 words joined by single spaces (such a key could never match).
pub fn key_order(key: &str) -> Option<usize> {
    let words: Vec<&str> = key.split(' ').collect();
    let well_formed = words.iter().all(|w| !w.is_empty() && py_split(w).count() == 1);
    (well_formed && (1..=MAX_ORDER).contains(&words.len())).then_some(words.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_all_orders_in_reference_order() {
        let c = NgramCounts::of("a b a b");
        let got: Vec<(&str, usize, u32)> = c.iter().collect();
        assert_eq!(
            got,
            vec![
                ("a", 0, 2),
                ("b", 0, 2),
                ("a b", 1, 2),
                ("b a", 1, 1),
                ("a b a", 2, 1),
                ("b a b", 2, 1),
                ("a b a b", 3, 1)
            ]
        );
    }

    #[test]
    fn key_order_rejects_malformed_keys() {
        assert_eq!(key_order("a b c d"), Some(4));
        assert_eq!(key_order("a  b"), None);
        assert_eq!(key_order("a b c d e"), None);
        assert_eq!(key_order(""), None);
        assert_eq!(key_order("a\tb"), None);
    }
}
