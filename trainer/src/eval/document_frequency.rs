//! Document frequencies for CIDEr-D's idf weights: for each n-gram, the number
//! of reference *images* whose reference set contains it, and `ref_len`, the
//! number of images. Either computed from the references being scored (the
//! reference's "corpus" mode) or loaded from a cached corpus file
//! (`--eval-cider-cached-tokens`, what the caption runs use).
//!
//! File format (JSON; `scripts/convert_cider_df.py` writes it from the
//! reference's pickle):
//! `{"ref_len": <images>, "document_frequency": {"<n-gram words joined by single spaces>": <count>, …}}`

use super::ngrams::{key_order, NgramCounts};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentFrequency {
    /// Number of reference images; the idf numerator is `ln(ref_len)`.
    pub ref_len: f64,
    /// n-gram key → number of images whose references contain it.
    pub document_frequency: HashMap<String, f64>,
}

impl DocumentFrequency {
    /// Corpus mode: df over the given images' reference sets (one entry per image).
    pub fn from_references<S: AsRef<str>>(references_per_image: &[Vec<S>]) -> Self {
        let mut document_frequency: HashMap<String, f64> = HashMap::new();
        for references in references_per_image {
            let mut seen: HashSet<String> = HashSet::new();
            for reference in references {
                seen.extend(NgramCounts::of(reference.as_ref()).keys().map(str::to_string));
            }
            for key in seen {
                *document_frequency.entry(key).or_insert(0.0) += 1.0;
            }
        }
        DocumentFrequency { ref_len: references_per_image.len() as f64, document_frequency }
    }

    /// Loads and checks a cached df file (format in the module doc).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the CIDEr document-frequency file {}", path.display()))?;
        let df: DocumentFrequency = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a document-frequency file; expected {{\"ref_len\": N, \"document_frequency\": {{\"w1 w2\": count, …}}}} \
                 (convert the reference's pickle with scripts/convert_cider_df.py)",
                path.display()
            )
        })?;
        df.validate().with_context(|| format!("{}: invalid document-frequency file", path.display()))?;
        Ok(df)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn validate(&self) -> Result<()> {
        if !(self.ref_len.is_finite() && self.ref_len >= 1.0) {
            bail!("ref_len must be the number of reference images (≥ 1), got {}", self.ref_len);
        }
        for (key, &count) in &self.document_frequency {
            if key_order(key).is_none() {
                bail!("n-gram key {key:?} is not 1 to 4 words joined by single spaces");
            }
            if !(count.is_finite() && count >= 0.0) {
                bail!("n-gram {key:?} has count {count}; counts must be finite and ≥ 0");
            }
        }
        Ok(())
    }

    /// df of an n-gram key; 0 when absent.
    pub fn get(&self, key: &str) -> f64 {
        self.document_frequency.get(key).copied().unwrap_or(0.0)
    }

    /// `ln(ref_len)`, the idf numerator.
    pub fn log_ref_len(&self) -> f64 {
        self.ref_len.ln()
    }
}
