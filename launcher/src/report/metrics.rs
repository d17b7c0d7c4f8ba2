//! Reading a run's `metrics.jsonl`: one JSON object per line with `kind`
//! (`train` or `valid`), `num_updates` and numeric fields.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// One run's numeric series over updates, keyed by `kind` then field name.
#[derive(Debug, Default)]
pub struct RunMetrics {
    /// (kind, field) → points (num_updates, value) in file order.
    pub series: BTreeMap<(String, String), Vec<(f64, f64)>>,
}

impl RunMetrics {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut metrics = RunMetrics::default();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{}", path.display(), index + 1);
            let value: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}: not a JSON object", at()))?;
            let Some(object) = value.as_object() else { bail!("{}: not a JSON object", at()) };
            let (Some(kind), Some(updates)) =
                (object.get("kind").and_then(|k| k.as_str()), object.get("num_updates").and_then(|n| n.as_f64()))
            else {
                bail!("{}: a metrics line needs \"kind\" (train or valid) and a numeric \"num_updates\"", at());
            };
            // End-of-epoch records average the whole epoch: plotted among the
            // interval records they would show as spikes.
            if object.get("scope").and_then(|s| s.as_str()) == Some("epoch") {
                continue;
            }
            for (field, v) in object {
                if let Some(v) = v.as_f64().filter(|v| v.is_finite()) {
                    if field != "num_updates" {
                        metrics.series.entry((kind.to_string(), field.clone())).or_default().push((updates, v));
                    }
                }
            }
        }
        Ok(metrics)
    }

    pub fn get(&self, kind: &str, field: &str) -> Option<&[(f64, f64)]> {
        self.series.get(&(kind.to_string(), field.to_string())).map(Vec::as_slice)
    }

    /// The validation metric the run reports: `cider` (caption) or `score` (grounding).
    pub fn valid_metric(&self) -> Option<(&'static str, &[(f64, f64)])> {
        ["cider", "score"].into_iter().find_map(|m| self.get("valid", m).map(|s| (m, s)))
    }
}
