//! What the annotation readers share: ids that are numbers or strings,
//! telling one JSON document from JSON Lines, and reading JSON Lines.

use super::problem::{Checker, Origin, Problem};
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;

/// An id as annotation files write it: a number (COCO) or a string.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum RawId {
    Number(serde_json::Number),
    Text(String),
}

impl RawId {
    pub fn text(&self) -> String {
        match self {
            RawId::Number(n) => n.to_string(),
            RawId::Text(s) => s.clone(),
        }
    }
}

/// An id as the COCO-format JSON writes it: a number when it is one.
pub fn json_id(id: &str) -> serde_json::Value {
    id.parse::<u64>().map_or_else(|_| id.into(), Into::into)
}

pub enum Detected<T> {
    Document(T),
    Lines,
}

/// Reads `bytes` as one JSON document of type `T`, else as JSON Lines: a
/// file whose first line is a JSON object without any of `document_keys`.
/// Otherwise the document's parse error is the answer.
pub fn detect<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    what: &str,
    document_keys: &[&str],
) -> Result<Detected<T>> {
    let err = match serde_json::from_slice::<T>(bytes) {
        Ok(doc) => return Ok(Detected::Document(doc)),
        Err(e) => e,
    };
    let first = bytes.split(|&b| b == b'\n').find(|l| !l.iter().all(u8::is_ascii_whitespace)).unwrap_or_default();
    if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(first) {
        if !document_keys.iter().any(|k| obj.contains_key(*k)) {
            return Ok(Detected::Lines);
        }
    }
    bail!("{}: not {what}, nor JSON Lines with one object per line ({err})", path.display())
}

/// Calls `f` with each non-empty line of a JSON Lines file, parsed as `T`;
/// a line that does not parse is a bad record.
pub fn read_lines<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    checker: &mut Checker,
    mut f: impl FnMut(T, Origin, &mut Checker) -> Result<()>,
) -> Result<()> {
    for (k, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let origin = Origin::new(path, format!("line {}", k + 1));
        match serde_json::from_slice::<T>(line) {
            Ok(record) => f(record, origin, checker)?,
            Err(e) => checker.bad(Problem::new(&origin, "record", format!("not a valid record ({e})")))?,
        }
    }
    Ok(())
}

/// The whole annotation file.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the annotation file {}", path.display()))
}

/// A caption or expression: on one line, and not empty.
pub fn text_field(raw: &str, origin: &Origin, field: &str, checker: &mut Checker) -> Result<Option<String>> {
    let text = super::rows::one_line(raw);
    if text.trim().is_empty() {
        checker.bad(Problem::new(origin, field, "empty text"))?;
        return Ok(None);
    }
    Ok(Some(text))
}
