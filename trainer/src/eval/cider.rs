//! CIDEr-D as the reference's validation computes it (spec §4.1): raw term
//! counts times `ln(ref_len) − ln(max(1, df))`, per-order cosine with the
//! CIDEr-D clipping `min(v_hyp, v_ref) · v_ref`, a Gaussian length penalty
//! (σ = 6) on the difference of **bigram** counts, mean over the 4 orders,
//! mean over references, × 10. Floating-point operations follow the
//! reference's order, so results agree with it to the last bits or so.

use super::document_frequency::DocumentFrequency;
use super::ngrams::{NgramCounts, MAX_ORDER};
use std::collections::HashMap;

/// Width of the Gaussian length penalty.
pub const SIGMA: f64 = 6.0;

/// A CIDEr-D scorer with fixed document frequencies.
#[derive(Debug, Clone)]
pub struct CiderD {
    df: DocumentFrequency,
    log_ref_len: f64,
}

/// The tf-idf vector of one sentence.
struct Weighted {
    /// (n-gram, order − 1, weight) in the reference's iteration order.
    entries: Vec<(String, usize, f64)>,
    by_key: HashMap<String, f64>,
    norms: [f64; MAX_ORDER],
    /// The reference's "length": number of bigram occurrences (QUIRK, spec §4.1).
    length: f64,
}

impl CiderD {
    pub fn new(df: DocumentFrequency) -> Self {
        let log_ref_len = df.log_ref_len();
        CiderD { df, log_ref_len }
    }

    /// Corpus mode: document frequencies from the reference sets being scored.
    pub fn from_references<S: AsRef<str>>(references_per_image: &[Vec<S>]) -> Self {
        Self::new(DocumentFrequency::from_references(references_per_image))
    }

    pub fn document_frequency(&self) -> &DocumentFrequency {
        &self.df
    }

    /// CIDEr-D of one hypothesis against its references (already normalised;
    /// see `text_norm`). The reference asserts at least one reference; so do we.
    pub fn score<S: AsRef<str>>(&self, hypothesis: &str, references: &[S]) -> f64 {
        assert!(!references.is_empty(), "CIDEr-D needs at least one reference per image");
        let hyp = self.weigh(&NgramCounts::of(hypothesis));
        let mut per_order = [0.0f64; MAX_ORDER];
        for reference in references {
            let r = self.weigh(&NgramCounts::of(reference.as_ref()));
            for (total, sim) in per_order.iter_mut().zip(similarity(&hyp, &r)) {
                *total += sim;
            }
        }
        // numpy's mean of 4 values: the first element plus the sum of the rest.
        let rest: f64 = per_order[1..].iter().fold(0.0, |acc, s| acc + s);
        let mean_over_orders = (per_order[0] + rest) / MAX_ORDER as f64;
        mean_over_orders / references.len() as f64 * 10.0
    }

    /// Scores many images; with [`CiderD::from_references`] on the same
    /// references this is the reference's corpus-mode `compute_score`.
    pub fn score_all<H: AsRef<str>, S: AsRef<str>>(&self, samples: &[(H, Vec<S>)]) -> Vec<f64> {
        samples.iter().map(|(hyp, refs)| self.score(hyp.as_ref(), refs)).collect()
    }

    fn weigh(&self, counts: &NgramCounts) -> Weighted {
        let mut entries = Vec::with_capacity(counts.len());
        let mut squares = [0.0f64; MAX_ORDER];
        let mut length = 0.0;
        for (key, order, tf) in counts.iter() {
            let weight = f64::from(tf) * (self.log_ref_len - self.df.get(key).max(1.0).ln());
            squares[order] += weight.powi(2);
            if order == 1 {
                length += f64::from(tf);
            }
            entries.push((key.to_string(), order, weight));
        }
        let by_key = entries.iter().map(|(k, _, w)| (k.clone(), *w)).collect();
        Weighted { entries, by_key, norms: squares.map(f64::sqrt), length }
    }
}

/// Per-order clipped cosine times the length penalty.
fn similarity(hyp: &Weighted, reference: &Weighted) -> [f64; MAX_ORDER] {
    let delta = hyp.length - reference.length;
    let penalty = std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA));
    let mut value = [0.0f64; MAX_ORDER];
    for (key, order, weight) in &hyp.entries {
        let ref_weight = reference.by_key.get(key).copied().unwrap_or(0.0);
        value[*order] += weight.min(ref_weight) * ref_weight;
    }
    for ((v, &norm_hyp), &norm_ref) in value.iter_mut().zip(&hyp.norms).zip(&reference.norms) {
        if norm_hyp != 0.0 && norm_ref != 0.0 {
            *v /= norm_hyp * norm_ref;
        }
        *v *= penalty;
    }
    value
}

/// Sum and count of per-sample scores, the pair the reference all-reduces
/// over workers and accumulates over validation batches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScoreSum {
    pub sum: f64,
    pub count: f64,
}

impl ScoreSum {
    pub fn add(&mut self, score: f64) {
        self.sum += score;
        self.count += 1.0;
    }

    pub fn merge(&mut self, other: ScoreSum) {
        self.sum += other.sum;
        self.count += other.count;
    }

    /// `[sum, count]`, for an all-reduce.
    pub fn to_array(self) -> [f64; 2] {
        [self.sum, self.count]
    }

    pub fn from_array([sum, count]: [f64; 2]) -> Self {
        ScoreSum { sum, count }
    }

    /// The mean, or `None` when nothing was scored.
    pub fn mean(self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// Python's `round(x, digits)` (exact binary value, ties to even): the
/// reference logs `cider` with 3 and `score` with 4 decimals, and compares
/// checkpoints on the rounded value.
pub fn round_like_python(x: f64, digits: usize) -> f64 {
    // Rust's fixed-precision formatting rounds the exact value half to even,
    // as CPython's round does; parsing back gives the nearest double.
    format!("{x:.digits$}").parse().unwrap_or(x)
}
