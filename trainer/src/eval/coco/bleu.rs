//! BLEU-1…4 as pycocoevalcap's `Bleu(4)` computes it: corpus-level clipped
//! n-gram precisions, the brevity penalty against the **closest** reference
//! length of each image (ties to the shorter), and the scorer's smoothing
//! constants (`tiny` = 1e-15 on the numerators, `small` = 1e-9 on the
//! denominators), so a hypothesis with no n-grams gives ~0 rather than NaN.

use crate::data::text::py_split;
use std::collections::HashMap;

pub const MAX_ORDER: usize = 4;
const TINY: f64 = 1e-15;
const SMALL: f64 = 1e-9;

type Counts<'a> = HashMap<&'a [&'a str], usize>;

fn ngram_counts<'a>(words: &'a [&'a str]) -> Counts<'a> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER {
        for window in words.windows(n) {
            *counts.entry(window).or_insert(0) += 1;
        }
    }
    counts
}

/// The per-image statistics the corpus score sums.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    test_len: usize,
    ref_len: usize,
    guess: [usize; MAX_ORDER],
    correct: [usize; MAX_ORDER],
}

fn image_stats(hypothesis: &str, references: &[String]) -> Stats {
    let hyp: Vec<&str> = py_split(hypothesis).collect();
    let refs: Vec<Vec<&str>> = references.iter().map(|r| py_split(r).collect()).collect();
    let mut max_counts: HashMap<&[&str], usize> = HashMap::new();
    for words in &refs {
        for (gram, count) in ngram_counts(words) {
            let slot = max_counts.entry(gram).or_insert(0);
            *slot = (*slot).max(count);
        }
    }
    let test_len = hyp.len();
    // min over (|len − test_len|, len): the closest length, the shorter on ties.
    let ref_len = refs.iter().map(|r| (r.len().abs_diff(test_len), r.len())).min().map_or(0, |(_, l)| l);
    let mut stats = Stats { test_len, ref_len, ..Default::default() };
    for k in 0..MAX_ORDER {
        stats.guess[k] = (test_len + 1).saturating_sub(k + 1);
    }
    for (gram, count) in ngram_counts(&hyp) {
        stats.correct[gram.len() - 1] += count.min(max_counts.get(gram).copied().unwrap_or(0));
    }
    stats
}

/// Corpus BLEU-1…4 over (hypothesis, references) pairs of tokenized captions.
pub fn corpus_bleu(samples: &[(String, Vec<String>)]) -> [f64; MAX_ORDER] {
    let mut total = Stats::default();
    for (hyp, refs) in samples {
        let s = image_stats(hyp, refs);
        total.test_len += s.test_len;
        total.ref_len += s.ref_len;
        for k in 0..MAX_ORDER {
            total.guess[k] += s.guess[k];
            total.correct[k] += s.correct[k];
        }
    }
    let mut bleus = [0.0; MAX_ORDER];
    let mut product = 1.0f64;
    for (k, bleu) in bleus.iter_mut().enumerate() {
        product *= (total.correct[k] as f64 + TINY) / (total.guess[k] as f64 + SMALL);
        *bleu = product.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (total.test_len as f64 + TINY) / (total.ref_len as f64 + SMALL);
    if ratio < 1.0 {
        for b in &mut bleus {
            *b *= (1.0 - 1.0 / ratio).exp();
        }
    }
    bleus
}
