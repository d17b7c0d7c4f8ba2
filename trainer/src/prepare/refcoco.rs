//! `prepare refcoco`: the refer toolkit's refs (pickle or JSON) with COCO's
//! `instances.json`, or JSON Lines, to the grounding TSV (uniq-id, image-id,
//! expression, `x0,y0,x1,y1`, image; spec §1.1). Serves RefCOCO, RefCOCO+ and RefCOCOg.

use super::json_input::{detect, read_file, read_lines, text_field, Detected, RawId};
use super::problem::{Checker, Origin, Problem};
use super::rows::{Entry, ImageTable};
use super::{write_dataset, CommonArgs, Dataset};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Unpickles a refs file and prints it as JSON (also usable on its own).
const REFER_TO_JSON: &str = include_str!("../../../scripts/refer_to_json.py");

#[derive(clap::Args, Debug)]
pub struct RefcocoArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// COCO's instances.json for a refer file: the boxes and image file names
    /// (default: instances.json beside --annotations).
    #[arg(long, value_name = "FILE")]
    pub instances: Option<PathBuf>,
}

#[derive(Deserialize)]
struct ReferRef {
    ref_id: RawId,
    ann_id: RawId,
    image_id: RawId,
    split: Option<String>,
    sentences: Vec<ReferSentence>,
}

#[derive(Deserialize)]
struct ReferSentence {
    /// The toolkit's cleaned sentence; `raw` is the original.
    sent: Option<String>,
    raw: Option<String>,
}

#[derive(Deserialize)]
struct Instances {
    images: Vec<InstanceImage>,
    annotations: Vec<InstanceAnnotation>,
}

#[derive(Deserialize)]
struct InstanceImage {
    id: RawId,
    file_name: String,
}

#[derive(Deserialize)]
struct InstanceAnnotation {
    id: RawId,
    /// COCO's `[x, y, width, height]`.
    bbox: Vec<f64>,
}

#[derive(Deserialize)]
struct RefLine {
    image: String,
    expression: String,
    /// `[x0, y0, x1, y1]` in pixels of the image.
    #[serde(rename = "box")]
    region: Vec<f64>,
    id: Option<RawId>,
    image_id: Option<RawId>,
}

pub fn run(args: &RefcocoArgs) -> Result<()> {
    let common = &args.common;
    let mut checker = common.checker();
    let path = &common.annotations;
    let mut bytes = read_file(path)?;
    // Every pickle protocol from 2 on starts with the PROTO opcode.
    let pickled = bytes.first() == Some(&0x80);
    if pickled {
        bytes = unpickle(path)?;
    }
    let data = match detect::<Vec<ReferRef>>(path, &bytes, "a refer refs file (pickle or JSON)", &[])? {
        Detected::Document(refs) => {
            refer(args, refs, if pickled { "refer pickle" } else { "refer JSON" }, &mut checker)?
        }
        Detected::Lines => {
            common.no_split("a JSON Lines file")?;
            json_lines(common, &bytes, &mut checker)?
        }
    };
    write_dataset(common, "prepare refcoco", checker, data, |_| Ok(()))
}

/// The refs of a refer pickle as JSON, through `scripts/refer_to_json.py`
/// and Python (`$ELFIN_PYTHON`, else elfin's venv, else `python3`).
fn unpickle(path: &Path) -> Result<Vec<u8>> {
    let venv = Path::new("/opt/elfin/venv/bin/python");
    let python = std::env::var_os("ELFIN_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        if venv.exists() {
            venv.to_path_buf()
        } else {
            PathBuf::from("python3")
        }
    });
    let out = Command::new(&python).arg("-c").arg(REFER_TO_JSON).arg(path).output().with_context(|| {
        format!(
            "{} is a pickle, read through Python, but {} does not start; set ELFIN_PYTHON, \
             or convert it once with `python3 scripts/refer_to_json.py REFS.p REFS.json` and pass the JSON",
            path.display(),
            python.display()
        )
    })?;
    if !out.status.success() {
        bail!("{}: unpickling failed: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// The box as the TSV writes it: each coordinate as the f32 the loader reads, shortest form.
fn format_box(b: &[f64; 4]) -> String {
    b.iter().map(|&v| (v as f32).to_string()).collect::<Vec<_>>().join(",")
}

/// A valid `x0,y0,x1,y1` box, or why not.
fn check_box(b: &[f64]) -> Result<[f64; 4], String> {
    let b: [f64; 4] = b.try_into().map_err(|_| format!("expected 4 numbers x0,y0,x1,y1, found {}", b.len()))?;
    if b[2] < b[0] || b[3] < b[1] {
        return Err(format!("{} is not a box: x1 < x0 or y1 < y0", format_box(&b)));
    }
    Ok(b)
}

fn refer(args: &RefcocoArgs, refs: Vec<ReferRef>, format: &'static str, checker: &mut Checker) -> Result<Dataset> {
    let common = &args.common;
    let path = &common.annotations;
    let instances_path = args.instances.clone().unwrap_or_else(|| path.with_file_name("instances.json"));
    let instances: Instances = serde_json::from_slice(&read_file(&instances_path)?).with_context(|| {
        format!(
            "{}: not a COCO instances file (images with id and file_name, annotations with id and bbox)",
            instances_path.display()
        )
    })?;
    let files: HashMap<String, &str> =
        instances.images.iter().map(|im| (im.id.text(), im.file_name.as_str())).collect();
    let boxes: HashMap<String, &[f64]> =
        instances.annotations.iter().map(|a| (a.id.text(), a.bbox.as_slice())).collect();
    let splits = common.splits();
    let mut found = BTreeSet::new();
    let mut images = ImageTable::default();
    let mut entries = Vec::new();
    for (k, r) in refs.iter().enumerate() {
        let split = r.split.clone().unwrap_or_default();
        found.insert(split.clone());
        if splits.as_ref().is_some_and(|s| !s.contains(&split)) {
            continue;
        }
        let ref_id = r.ref_id.text();
        let origin = Origin::new(path, format!("refs[{k}] (ref_id {ref_id})"));
        let (ann_id, image_id) = (r.ann_id.text(), r.image_id.text());
        let Some(bbox) = boxes.get(&ann_id) else {
            let message = format!("annotation {ann_id} is not in {}", instances_path.display());
            checker.bad(Problem::new(&origin, "ann_id", message))?;
            continue;
        };
        let Some(file) = files.get(&image_id) else {
            let message = format!("image {image_id} is not in {}", instances_path.display());
            checker.bad(Problem::new(&origin, "image_id", message))?;
            continue;
        };
        let corners: Vec<f64> = match bbox[..] {
            [x, y, w, h] => vec![x, y, x + w, y + h],
            _ => bbox.to_vec(),
        };
        let region = match check_box(&corners) {
            Ok(b) => b,
            Err(message) => {
                checker.bad(Problem::new(&origin, "bbox", format!("annotation {ann_id}: {message}")))?;
                continue;
            }
        };
        let image = images.intern(common.images.join(file));
        for (s, sentence) in r.sentences.iter().enumerate() {
            let origin = Origin::new(path, format!("{} sentences[{s}]", origin.record));
            let raw = sentence.sent.as_deref().or(sentence.raw.as_deref()).unwrap_or_default();
            let Some(text) = text_field(raw, &origin, "sent", checker)? else { continue };
            entries.push(Entry {
                id: format!("{ref_id}_{s}"),
                image_id: image_id.clone(),
                text,
                extra: format_box(&region),
                image,
                region: Some(region),
                origin,
            });
        }
    }
    if let Some(splits) = &splits {
        if !splits.iter().any(|s| found.contains(s)) {
            bail!(
                "{}: no ref of split {} (the file's splits: {})",
                path.display(),
                splits.join(","),
                found.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(Dataset { images, entries, format })
}

fn json_lines(common: &CommonArgs, bytes: &[u8], checker: &mut Checker) -> Result<Dataset> {
    let mut images = ImageTable::default();
    let mut entries = Vec::new();
    read_lines::<RefLine>(&common.annotations, bytes, checker, |line, origin, checker| {
        let region = match check_box(&line.region) {
            Ok(b) => b,
            Err(message) => return checker.bad(Problem::new(&origin, "box", message)),
        };
        let Some(text) = text_field(&line.expression, &origin, "expression", checker)? else { return Ok(()) };
        let image = images.intern(common.images.join(&line.image));
        let number = origin.record.trim_start_matches("line ").to_string();
        entries.push(Entry {
            // Rows without an id are numbered by their line; images in order of appearance, from 1.
            id: line.id.as_ref().map_or(number, RawId::text),
            image_id: line.image_id.as_ref().map_or_else(|| (image + 1).to_string(), RawId::text),
            text,
            extra: format_box(&region),
            image,
            region: Some(region),
            origin,
        });
        Ok(())
    })?;
    Ok(Dataset { images, entries, format: "JSON Lines" })
}
