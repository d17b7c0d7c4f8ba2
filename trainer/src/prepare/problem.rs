//! Bad input records: where each came from, and whether it stops the run
//! (the default) or is left out and listed in the skip report (`--skip-bad`).

use anyhow::{bail, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a record came from: the annotation file and the record in it
/// (`line 12`, `annotations[3] (id 77)`, `refs[5] (ref_id 9) sentence 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub record: String,
}

impl Origin {
    pub fn new(file: &Path, record: impl Into<String>) -> Self {
        Origin { file: file.to_path_buf(), record: record.into() }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.record)
    }
}

/// One bad record: `FILE: RECORD: FIELD: what is wrong`.
#[derive(Debug, Clone)]
pub struct Problem {
    pub origin: Origin,
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(origin: &Origin, field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { origin: origin.clone(), field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.field, self.message)
    }
}

/// Decides what a bad record does: stop with its problem, or skip it and remember why.
pub struct Checker {
    skip_bad: bool,
    report: PathBuf,
    skipped: Vec<Problem>,
}

impl Checker {
    pub fn new(skip_bad: bool, report: PathBuf) -> Self {
        Checker { skip_bad, report, skipped: Vec::new() }
    }

    /// `Ok` when the record is to be skipped; the error that stops the run otherwise.
    pub fn bad(&mut self, problem: Problem) -> Result<()> {
        if !self.skip_bad {
            bail!(
                "{problem}\n(fix the input, or pass --skip-bad to leave such records out and list them in {})",
                self.report.display()
            );
        }
        self.skipped.push(problem);
        Ok(())
    }

    pub fn skipped(&self) -> &[Problem] {
        &self.skipped
    }

    pub fn report_path(&self) -> &Path {
        &self.report
    }
}
