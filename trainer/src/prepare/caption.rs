//! `prepare caption`: COCO captions, Karpathy's split file or JSON Lines to
//! the caption TSV (uniq-id, image-id, caption, labels, image; spec §1.1),
//! with the COCO-format references and CIDEr document frequencies of the rows written.

use super::json_input::{detect, json_id, read_file, read_lines, text_field, Detected, RawId};
use super::output::{sibling, write_json};
use super::problem::{Checker, Origin, Problem};
use super::rows::{Entry, ImageTable};
use super::{write_dataset, CommonArgs, Dataset};
use crate::eval::document_frequency::DocumentFrequency;
use crate::eval::text_norm::{normalize_caption, REFERENCE_SEPARATOR};
use anyhow::{bail, Result};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// One row per caption: the layout of the training files.
    PerCaption,
    /// One row per image, its captions joined by `&&`: the layout of validation and test files.
    PerImage,
}

#[derive(clap::Args, Debug)]
pub struct CaptionArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Row layout (default: per-image when --split is only val and/or test, else per-caption).
    #[arg(long, value_enum)]
    pub rows: Option<Rows>,
}

/// One caption of the input.
struct Caption {
    /// The caption's own id (COCO annotation id, Karpathy sentid, JSON Lines `id`).
    id: Option<String>,
    image: usize,
    image_id: String,
    /// The image's path as the annotations give it (relative to --images).
    file_name: String,
    text: String,
    origin: Origin,
    /// The record of the image, for problems of a whole per-image row.
    image_origin: Origin,
}

#[derive(Deserialize)]
struct CaptionJson {
    images: Vec<ImageRecord>,
    annotations: Option<Vec<CocoCaption>>,
}

/// An image of a COCO captions file (`id`, `file_name`) or of Karpathy's (`cocoid`/`imgid`, `filepath`, `filename`, `split`, `sentences`).
#[derive(Deserialize)]
struct ImageRecord {
    id: Option<RawId>,
    file_name: Option<String>,
    cocoid: Option<RawId>,
    imgid: Option<RawId>,
    filepath: Option<String>,
    filename: Option<String>,
    split: Option<String>,
    sentences: Option<Vec<KarpathySentence>>,
}

#[derive(Deserialize)]
struct KarpathySentence {
    raw: String,
    sentid: Option<RawId>,
}

#[derive(Deserialize)]
struct CocoCaption {
    id: Option<RawId>,
    image_id: RawId,
    caption: String,
}

#[derive(Deserialize)]
struct CaptionLine {
    image: String,
    caption: String,
    id: Option<RawId>,
    image_id: Option<RawId>,
}

struct Input {
    images: ImageTable,
    captions: Vec<Caption>,
    format: &'static str,
}

pub fn run(args: &CaptionArgs) -> Result<()> {
    let common = &args.common;
    let rows = args.rows.unwrap_or_else(|| match common.splits() {
        Some(s) if !s.is_empty() && s.iter().all(|n| n == "val" || n == "test") => Rows::PerImage,
        _ => Rows::PerCaption,
    });
    let mut checker = common.checker();
    let input = read_input(common, &mut checker)?;
    let (entries, captions_of) = layout(&input.captions, rows, &mut checker)?;
    let data = Dataset { images: input.images, entries, format: input.format };
    write_dataset(common, "prepare caption", checker, data, |kept| {
        let kept: Vec<&Caption> =
            kept.iter().flat_map(|&e| captions_of[e].iter().map(|&c| &input.captions[c])).collect();
        write_references(&common.out, &common.annotations, &kept)
    })
}

fn read_input(common: &CommonArgs, checker: &mut Checker) -> Result<Input> {
    let path = &common.annotations;
    let bytes = read_file(path)?;
    match detect::<CaptionJson>(path, &bytes, "a COCO captions or Karpathy JSON file", &["images", "annotations"])? {
        Detected::Document(doc) => match doc.annotations {
            Some(annotations) => {
                common.no_split("a COCO captions file")?;
                coco(common, doc.images, annotations, checker)
            }
            None => karpathy(common, doc.images, checker),
        },
        Detected::Lines => {
            common.no_split("a JSON Lines file")?;
            json_lines(common, &bytes, checker)
        }
    }
}

fn coco(
    common: &CommonArgs,
    images: Vec<ImageRecord>,
    annotations: Vec<CocoCaption>,
    checker: &mut Checker,
) -> Result<Input> {
    let path = &common.annotations;
    let mut table = ImageTable::default();
    // image id → (table index, file name, record)
    let mut by_id: HashMap<String, (usize, String, Origin)> = HashMap::new();
    for (k, im) in images.iter().enumerate() {
        let origin = Origin::new(path, format!("images[{k}]"));
        let (Some(id), Some(file)) = (&im.id, &im.file_name) else {
            checker.bad(Problem::new(&origin, "id, file_name", "a COCO image needs both"))?;
            continue;
        };
        let id = id.text();
        if let Some((_, _, other)) = by_id.get(&id) {
            checker.bad(Problem::new(&origin, "id", format!("duplicate image id {id}: {other} has it too")))?;
            continue;
        }
        let index = table.intern(common.images.join(file));
        by_id.insert(id, (index, file.clone(), origin));
    }
    let mut captions = Vec::with_capacity(annotations.len());
    for (k, a) in annotations.iter().enumerate() {
        let id = a.id.as_ref().map(RawId::text);
        let origin = Origin::new(
            path,
            format!("annotations[{k}]{}", id.as_ref().map_or(String::new(), |i| format!(" (id {i})"))),
        );
        let image_id = a.image_id.text();
        let Some((image, file_name, image_origin)) = by_id.get(&image_id) else {
            checker.bad(Problem::new(
                &origin,
                "image_id",
                format!("image id {image_id} is not among the file's images"),
            ))?;
            continue;
        };
        let Some(text) = text_field(&a.caption, &origin, "caption", checker)? else { continue };
        captions.push(Caption {
            id,
            image: *image,
            image_id,
            file_name: file_name.clone(),
            text,
            origin,
            image_origin: image_origin.clone(),
        });
    }
    // COCO lists captions in no useful order; grouped by image (in the order
    // of `images`), each image is read once instead of once per caption.
    captions.sort_by_key(|c| c.image);
    Ok(Input { images: table, captions, format: "COCO captions" })
}

fn karpathy(common: &CommonArgs, images: Vec<ImageRecord>, checker: &mut Checker) -> Result<Input> {
    let path = &common.annotations;
    let splits = common.splits();
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut table = ImageTable::default();
    let mut seen: HashMap<String, Origin> = HashMap::new();
    let mut captions = Vec::new();
    for (k, im) in images.iter().enumerate() {
        let split = im.split.clone().unwrap_or_default();
        found.insert(split.clone());
        if splits.as_ref().is_some_and(|s| !s.contains(&split)) {
            continue;
        }
        let origin = Origin::new(path, format!("images[{k}]"));
        let (Some(id), Some(filename), Some(sentences)) =
            (im.cocoid.as_ref().or(im.imgid.as_ref()), &im.filename, &im.sentences)
        else {
            checker.bad(Problem::new(
                &origin,
                "cocoid, filename, sentences",
                "a Karpathy image needs all three (imgid may stand for cocoid)",
            ))?;
            continue;
        };
        let image_id = id.text();
        let origin = Origin::new(path, format!("images[{k}] (cocoid {image_id})"));
        if let Some(other) = seen.get(&image_id) {
            checker.bad(Problem::new(
                &origin,
                "cocoid",
                format!("duplicate image id {image_id}: {other} has it too"),
            ))?;
            continue;
        }
        seen.insert(image_id.clone(), origin.clone());
        let file_name = karpathy_file(&common.images, im.filepath.as_deref(), filename);
        let image = table.intern(common.images.join(&file_name));
        for (s, sentence) in sentences.iter().enumerate() {
            let sentence_origin = Origin::new(path, format!("{} sentences[{s}]", origin.record));
            let Some(text) = text_field(&sentence.raw, &sentence_origin, "raw", checker)? else { continue };
            captions.push(Caption {
                id: sentence.sentid.as_ref().map(RawId::text),
                image,
                image_id: image_id.clone(),
                file_name: file_name.clone(),
                text,
                origin: sentence_origin,
                image_origin: origin.clone(),
            });
        }
    }
    if let Some(splits) = &splits {
        if captions.is_empty() && !splits.iter().any(|s| found.contains(s)) {
            bail!(
                "{}: no image of split {} (the file's splits: {})",
                path.display(),
                splits.join(","),
                found.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(Input { images: table, captions, format: "Karpathy" })
}

/// Karpathy's images live in `filepath/filename` (`train2014/COCO_…`);
/// `--images` may be the folder above those, or the one folder holding them all.
fn karpathy_file(images: &Path, filepath: Option<&str>, filename: &str) -> String {
    match filepath {
        Some(dir) if !dir.is_empty() => {
            let nested = format!("{dir}/{filename}");
            if !images.join(&nested).exists() && images.join(filename).exists() {
                filename.to_string()
            } else {
                nested
            }
        }
        _ => filename.to_string(),
    }
}

fn json_lines(common: &CommonArgs, bytes: &[u8], checker: &mut Checker) -> Result<Input> {
    let mut table = ImageTable::default();
    let mut first_use: HashMap<usize, Origin> = HashMap::new();
    let mut captions = Vec::new();
    read_lines::<CaptionLine>(&common.annotations, bytes, checker, |line, origin, checker| {
        let Some(text) = text_field(&line.caption, &origin, "caption", checker)? else { return Ok(()) };
        let image = table.intern(common.images.join(&line.image));
        let image_origin = first_use.entry(image).or_insert_with(|| origin.clone()).clone();
        captions.push(Caption {
            id: line.id.as_ref().map(RawId::text),
            image,
            // Images without an id are numbered in order of appearance, from 1.
            image_id: line.image_id.as_ref().map_or_else(|| (image + 1).to_string(), RawId::text),
            file_name: line.image,
            text,
            origin,
            image_origin,
        });
        Ok(())
    })?;
    Ok(Input { images: table, captions, format: "JSON Lines" })
}

/// The TSV entries of `rows`' layout, and for each entry the captions it holds.
fn layout(captions: &[Caption], rows: Rows, checker: &mut Checker) -> Result<(Vec<Entry>, Vec<Vec<usize>>)> {
    let entry = |id: String, c: &Caption, text: String, origin: &Origin| Entry {
        id,
        image_id: c.image_id.clone(),
        text,
        extra: String::new(),
        image: c.image,
        region: None,
        origin: origin.clone(),
    };
    // Captions of each image in order, images in order of first appearance.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    for (k, c) in captions.iter().enumerate() {
        let g = *group_of.entry(c.image).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(k);
    }
    match rows {
        Rows::PerCaption => {
            let mut rank_in_image: HashMap<usize, usize> = HashMap::new();
            Ok(captions
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    let n = rank_in_image.entry(c.image).or_default();
                    // A caption without an id is `IMAGEID_N`, N its 0-based rank among its image's captions.
                    let id = c.id.clone().unwrap_or_else(|| format!("{}_{n}", c.image_id));
                    *n += 1;
                    (entry(id, c, c.text.clone(), &c.origin), vec![k])
                })
                .unzip())
        }
        Rows::PerImage => {
            let mut out = (Vec::new(), Vec::new());
            for group in groups {
                let mut kept = Vec::new();
                for &k in &group {
                    if captions[k].text.contains(REFERENCE_SEPARATOR) {
                        let message = format!(
                            "contains {REFERENCE_SEPARATOR:?}, which separates the captions of a per-image row"
                        );
                        checker.bad(Problem::new(&captions[k].origin, "caption", message))?;
                    } else {
                        kept.push(k);
                    }
                }
                let Some(&first) = kept.first() else { continue };
                let c = &captions[first];
                let text =
                    kept.iter().map(|&k| captions[k].text.as_str()).collect::<Vec<_>>().join(REFERENCE_SEPARATOR);
                out.0.push(entry(c.image_id.clone(), c, text, &c.image_origin));
                out.1.push(kept);
            }
            Ok(out)
        }
    }
}

/// `OUT.coco.json` (the references in COCO's caption format) and `OUT.df.json`
/// (CIDEr-D document frequencies of the references, per image, as scoring normalises them).
fn write_references(out: &Path, annotations: &Path, kept: &[&Caption]) -> Result<()> {
    let mut images: Vec<serde_json::Value> = Vec::new();
    let mut refs: Vec<Vec<String>> = Vec::new();
    let mut image_of: HashMap<&str, usize> = HashMap::new();
    let mut coco_annotations = Vec::with_capacity(kept.len());
    for (n, c) in kept.iter().enumerate() {
        let g = *image_of.entry(&c.image_id).or_insert_with(|| {
            images.push(serde_json::json!({"id": json_id(&c.image_id), "file_name": c.file_name}));
            refs.push(Vec::new());
            refs.len() - 1
        });
        refs[g].push(normalize_caption(&c.text));
        let id = c.id.as_deref().map_or_else(|| (n + 1).into(), json_id);
        coco_annotations.push(serde_json::json!({"image_id": json_id(&c.image_id), "id": id, "caption": c.text}));
    }
    let coco = serde_json::json!({
        "info": {"description": format!("captions of {}, written by elfin-train prepare caption", annotations.display())},
        "licenses": [],
        "type": "captions",
        "images": images,
        "annotations": coco_annotations,
    });
    write_json(&sibling(out, ".coco.json"), &coco)?;
    write_json(&sibling(out, ".df.json"), &DocumentFrequency::from_references(&refs))
}
