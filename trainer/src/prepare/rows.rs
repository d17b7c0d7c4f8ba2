//! The rows to write, and writing them: each image read and encoded once per
//! chunk of rows by the worker threads, rows written in input order.

use super::image_file::{encode, Encoded, ImageOptions};
use super::output::PendingFile;
use super::problem::{Checker, Origin, Problem};
use super::progress::Progress;
use anyhow::{Context, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Rows per chunk: the images of one chunk are encoded in parallel and held in memory together.
const CHUNK: usize = 256;

/// The image files of a dataset, each listed once.
#[derive(Default)]
pub struct ImageTable {
    paths: Vec<PathBuf>,
    index: HashMap<PathBuf, usize>,
}

impl ImageTable {
    pub fn intern(&mut self, path: PathBuf) -> usize {
        if let Some(&i) = self.index.get(&path) {
            return i;
        }
        self.paths.push(path.clone());
        self.index.insert(path, self.paths.len() - 1);
        self.paths.len() - 1
    }

    pub fn path(&self, i: usize) -> &Path {
        &self.paths[i]
    }
}

/// One TSV row to be: `id, image_id, text, extra, image`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub image_id: String,
    pub text: String,
    /// Column 3: the (unused) object labels of a caption row, the region-coord of a grounding row.
    pub extra: String,
    pub image: usize,
    /// A box `x0,y0,x1,y1` that must lie within the image.
    pub region: Option<[f64; 4]>,
    pub origin: Origin,
}

/// A field's text on one TSV line: tabs and line breaks become spaces (the
/// tasks split text on whitespace, so this keeps what they see).
pub fn one_line(text: &str) -> String {
    text.replace(['\t', '\n', '\r'], " ")
}

/// Settings of the writing pass.
pub struct WriteOptions {
    pub image: ImageOptions,
    pub threads: usize,
    /// Progress label, e.g. `prepare caption`.
    pub label: String,
}

/// Writes the good entries as TSV lines to `file` and returns their indices.
/// Duplicate ids, images that cannot be read, and boxes outside their image go to `checker`.
pub fn write_rows(
    images: &ImageTable,
    entries: &[Entry],
    opts: &WriteOptions,
    checker: &mut Checker,
    file: &mut PendingFile,
) -> Result<Vec<usize>> {
    let candidates = unique_ids(entries, checker)?;
    let chunks: Vec<(&[usize], Vec<usize>)> = candidates
        .chunks(CHUNK)
        .map(|chunk| {
            let mut distinct: Vec<usize> = chunk.iter().map(|&e| entries[e].image).collect();
            let mut seen = std::collections::HashSet::new();
            distinct.retain(|i| seen.insert(*i));
            (chunk, distinct)
        })
        .collect();
    let total: usize = chunks.iter().map(|(_, d)| d.len()).sum();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .context("starting the worker threads")?;
    let progress = Progress::new(&opts.label, total as u64);
    let mut kept = Vec::with_capacity(candidates.len());
    for (chunk, distinct) in &chunks {
        let encoded: Vec<Result<Encoded, String>> = pool.install(|| {
            distinct
                .par_iter()
                .map(|&i| {
                    let r = encode(images.path(i), &opts.image).map_err(|e| format!("{e:#}"));
                    progress.inc();
                    r
                })
                .collect()
        });
        let by_image: HashMap<usize, &Result<Encoded, String>> = distinct.iter().copied().zip(&encoded).collect();
        for &e in chunk.iter() {
            let entry = &entries[e];
            let image = match by_image[&entry.image] {
                Ok(image) => image,
                Err(message) => {
                    checker.bad(Problem::new(&entry.origin, "image", message.clone()))?;
                    continue;
                }
            };
            if let Some(b) = entry.region {
                let (w, h) = (image.width as f64, image.height as f64);
                if b[0] < 0.0 || b[1] < 0.0 || b[2] > w || b[3] > h {
                    let message = format!(
                        "box {} (x0,y0,x1,y1) lies outside the {}×{} image {}",
                        entry.extra,
                        image.width,
                        image.height,
                        images.path(entry.image).display()
                    );
                    checker.bad(Problem::new(&entry.origin, "box", message))?;
                    continue;
                }
            }
            writeln!(
                file.writer(),
                "{}\t{}\t{}\t{}\t{}",
                entry.id,
                entry.image_id,
                entry.text,
                entry.extra,
                image.base64
            )
            .context("writing the TSV file")?;
            kept.push(e);
        }
    }
    progress.finish();
    Ok(kept)
}

/// The entries whose uniq-id is a valid TSV field and was not used by an earlier entry.
fn unique_ids(entries: &[Entry], checker: &mut Checker) -> Result<Vec<usize>> {
    let mut first: HashMap<&str, &Origin> = HashMap::new();
    let mut ok = Vec::with_capacity(entries.len());
    for (k, e) in entries.iter().enumerate() {
        if let Some(field) = [("id", &e.id), ("image id", &e.image_id)]
            .into_iter()
            .find(|(_, v)| v.is_empty() || v.contains(['\t', '\n', '\r']))
            .map(|(f, _)| f)
        {
            checker.bad(Problem::new(&e.origin, field, "is empty or contains a tab or line break"))?;
            continue;
        }
        if let Some(other) = first.get(e.id.as_str()) {
            checker.bad(Problem::new(&e.origin, "id", format!("duplicate id {:?}: {other} has it too", e.id)))?;
            continue;
        }
        first.insert(&e.id, &e.origin);
        ok.push(k);
    }
    Ok(ok)
}
