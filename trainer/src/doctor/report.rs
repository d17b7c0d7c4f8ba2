//! The lines of `doctor`: one per check, PASS/FAIL/SKIP, with what to do on
//! FAIL; as text or as JSON (`{"checks": [...]}`, which `elfin doctor` reads).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "FAIL")]
    Fail,
    #[serde(rename = "SKIP")]
    Skip,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What to do about a FAIL (empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Check {
    pub fn pass(check: &str, detail: impl Into<String>) -> Check {
        Check { check: check.into(), status: Status::Pass, detail: detail.into(), fix: String::new() }
    }
    pub fn skip(check: &str, detail: impl Into<String>) -> Check {
        Check { check: check.into(), status: Status::Skip, detail: detail.into(), fix: String::new() }
    }
    pub fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { check: check.into(), status: Status::Fail, detail: detail.into(), fix: fix.into() }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// `PASS  check: detail`, and under a FAIL `      fix: ...`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let status =
                serde_json::to_value(c.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            out.push_str(&format!("{status}  {}: {}\n", c.check, c.detail));
            if !c.fix.is_empty() {
                out.push_str(&format!("      fix: {}\n", c.fix));
            }
        }
        out
    }
}
