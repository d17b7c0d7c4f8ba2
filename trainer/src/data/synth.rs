//! `elfin-train synth`: small learnable datasets in the reference's TSV
//! layouts, with a BPE folder in the reference's three-file format, so the
//! demo and the tests run the same loading code as real OFA data.
//!
//! Images are coloured shapes (circle, square, triangle, diamond in six
//! colours, small or large) on a plain background, placed in distinct
//! horizontal slots so that position words are well defined. Every
//! (colour, shape) pair appears at most once per image, so a referring
//! expression names exactly one object, with or without location words.
//! Captions and expressions are fully determined by the image.

use super::bpe::{gpt2_pieces, Tokenizer};
use super::rng::Rng;
use anyhow::{Context, Result};
use base64::Engine;
use image::{ImageFormat, Rgb, RgbImage};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthTask {
    Caption,
    /// RefCOCO style: expressions with location words.
    Refcoco,
    /// RefCOCO+ style: no location words.
    Refcocoplus,
    /// RefCOCOg style: longer expressions.
    Refcocog,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    #[arg(long, value_enum)]
    pub task: SynthTask,
    /// Output folder: train.tsv, val.tsv and bpe/ are written there.
    #[arg(long)]
    pub out: PathBuf,
    /// Training images (caption: 5 lines each; grounding: one line per object).
    #[arg(long, default_value_t = 2000)]
    pub train: usize,
    /// Validation images (caption: one line each; grounding: one line per object).
    #[arg(long, default_value_t = 100)]
    pub val: usize,
    /// Typical image side in pixels; each image's width and height vary by ±25%.
    #[arg(long, default_value_t = 96)]
    pub image_size: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the images as PNG files (images/ID.png) with JSON Lines annotations
    /// (train.jsonl, val.jsonl), the input of `elfin-train prepare`, instead of TSV files.
    #[arg(long)]
    pub as_annotations: bool,
}

const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [215, 40, 40]),
    ("green", [40, 165, 60]),
    ("blue", [40, 80, 215]),
    ("yellow", [230, 205, 40]),
    ("purple", [145, 60, 185]),
    ("orange", [240, 135, 30]),
];
const SHAPES: [&str; 4] = ["circle", "square", "triangle", "diamond"];

#[derive(Debug, Clone)]
struct Object {
    colour: usize,
    shape: usize,
    large: bool,
    /// Centre and half-size in pixels.
    cx: f64,
    cy: f64,
    r: f64,
    /// 0-based horizontal slot among the image's objects (left to right).
    slot: usize,
}

impl Object {
    fn colour(&self) -> &'static str {
        COLOURS[self.colour].0
    }
    fn shape(&self) -> &'static str {
        SHAPES[self.shape]
    }
    fn size(&self) -> &'static str {
        if self.large {
            "large"
        } else {
            "small"
        }
    }
    fn contains(&self, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        match self.shape {
            0 => dx * dx + dy * dy <= self.r * self.r,
            1 => dx.abs() <= self.r && dy.abs() <= self.r,
            // Apex up, base 2r wide at the bottom.
            2 => dy.abs() <= self.r && dx.abs() <= (dy + self.r) / 2.0,
            _ => dx.abs() + dy.abs() <= self.r,
        }
    }
    fn region_coord(&self) -> String {
        format!("{:.2},{:.2},{:.2},{:.2}", self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)
    }
}

struct Scene {
    w: u32,
    h: u32,
    background: [u8; 3],
    objects: Vec<Object>,
}

fn scene(rng: &mut Rng, size: u32, count: usize) -> Scene {
    let jitter = |rng: &mut Rng| (size as f64 * (0.75 + 0.5 * rng.below(1001) as f64 / 1000.0)).round() as u32;
    let (w, h) = (jitter(rng).max(16), jitter(rng).max(16));
    let grey = rng.range(200, 245) as u8;
    let mut pairs: Vec<(usize, usize)> =
        (0..COLOURS.len()).flat_map(|c| (0..SHAPES.len()).map(move |s| (c, s))).collect();
    rng.shuffle(&mut pairs);
    let slot_w = w as f64 / count as f64;
    let objects = pairs[..count]
        .iter()
        .enumerate()
        .map(|(slot, &(colour, shape))| {
            let large = rng.below(2) == 1;
            let big = (0.42 * slot_w).min(0.3 * h as f64);
            let r = if large { big } else { 0.55 * big } * (0.9 + 0.1 * rng.below(101) as f64 / 100.0);
            let cx = slot as f64 * slot_w + r + (slot_w - 2.0 * r) * rng.below(1001) as f64 / 1000.0;
            let cy = r + (h as f64 - 2.0 * r) * rng.below(1001) as f64 / 1000.0;
            Object { colour, shape, large, cx, cy, r, slot }
        })
        .collect();
    Scene { w, h, background: [grey, grey, grey.saturating_sub(8)], objects }
}

fn render(scene: &Scene) -> RgbImage {
    RgbImage::from_fn(scene.w, scene.h, |x, y| {
        let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
        let hit = scene.objects.iter().rev().find(|o| o.contains(px, py));
        Rgb(hit.map_or(scene.background, |o| COLOURS[o.colour].1))
    })
}

fn png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Png).context("encoding a PNG")?;
    Ok(bytes.into_inner())
}

/// Position word of an object among `n` left-to-right slots.
fn position(o: &Object, n: usize) -> &'static str {
    match (o.slot, n) {
        (0, _) => "left",
        (s, n) if s + 1 == n => "right",
        _ => "middle",
    }
}

fn captions(s: &Scene) -> Vec<String> {
    let n = s.objects.len();
    match s.objects.as_slice() {
        [a] => vec![
            format!("a {} {} {}", a.size(), a.colour(), a.shape()),
            format!("a {} {} on a grey background", a.colour(), a.shape()),
            format!("one {} {} in the picture", a.colour(), a.shape()),
            format!("a {} {} shape", a.size(), a.colour()),
            format!(
                "a {} {} near the {}",
                a.colour(),
                a.shape(),
                if a.cx < s.w as f64 / 2.0 { "left" } else { "right" }
            ),
        ],
        [a, b] => vec![
            format!("a {} {} and a {} {}", a.colour(), a.shape(), b.colour(), b.shape()),
            format!("a {} {} to the left of a {} {}", a.colour(), a.shape(), b.colour(), b.shape()),
            format!("two shapes a {} {} and a {} {}", a.colour(), a.shape(), b.colour(), b.shape()),
            format!("a {} {} {} next to a {} {} {}", a.size(), a.colour(), a.shape(), b.size(), b.colour(), b.shape()),
            format!("a {} {} on the right and a {} {} on the left", b.colour(), b.shape(), a.colour(), a.shape()),
        ],
        _ => unreachable!("caption scenes have one or two objects, not {n}"),
    }
}

fn expression(task: SynthTask, s: &Scene, k: usize, rng: &mut Rng) -> String {
    let o = &s.objects[k];
    let n = s.objects.len();
    let (c, sh, sz, pos) = (o.colour(), o.shape(), o.size(), position(o, n));
    let other = &s.objects[(k + 1 + rng.below(n - 1)) % n];
    let templates: Vec<String> = match task {
        SynthTask::Refcoco => vec![
            format!("{c} {sh} on the {pos}"),
            format!("{pos} {c} {sh}"),
            format!("the {sh} on the {pos}"),
            format!("{pos} {sh}"),
        ],
        SynthTask::Refcocoplus => {
            vec![format!("{c} {sh}"), format!("the {c} {sh}"), format!("{sz} {c} {sh}"), format!("the {sz} {c} {sh}")]
        }
        SynthTask::Refcocog => vec![
            format!("a {sz} {c} {sh} that is next to a {} {}", other.colour(), other.shape()),
            format!("the {c} {sh} which is {sz} and sits on the {pos} of the picture"),
            format!("a {c} coloured {sh} that is not the {} {}", other.colour(), other.shape()),
        ],
        SynthTask::Caption => unreachable!("captions are not referring expressions"),
    };
    templates[rng.below(templates.len())].clone()
}

/// One row of a split: a validation caption row holds all its image's captions.
struct SynthRow {
    id: String,
    image_id: usize,
    texts: Vec<String>,
    /// Column 3: object labels (caption) or the region-coord (grounding).
    extra: String,
    /// Index of the row's image in `Split::images`.
    image: usize,
}

struct Split {
    rows: Vec<SynthRow>,
    /// PNG files, with their image ids.
    images: Vec<(usize, Vec<u8>)>,
    /// Texts the model will see, for the BPE vocabulary.
    texts: Vec<String>,
    /// One row per image with its captions joined by `&&` (the caption validation layout).
    per_image: bool,
}

fn make_split(args: &SynthArgs, images: usize, valid: bool, rng: &mut Rng, first_id: usize) -> Result<Split> {
    let per_image = valid && args.task == SynthTask::Caption;
    let mut out = Split { rows: Vec::new(), images: Vec::new(), texts: Vec::new(), per_image };
    for i in 0..images {
        let image_id = first_id + i;
        let image = out.images.len();
        match args.task {
            SynthTask::Caption => {
                let count = 1 + rng.below(2);
                let s = scene(rng, args.image_size, count);
                out.images.push((image_id, png(&render(&s))?));
                let labels: Vec<&str> = s.objects.iter().map(Object::shape).collect();
                let extra = labels.join("&&");
                let caps = captions(&s);
                if valid {
                    let id = image_id.to_string();
                    out.rows.push(SynthRow { id, image_id, texts: caps.clone(), extra, image });
                    out.texts.push(format!(" {}", caps.join("&&")));
                } else {
                    for (k, c) in caps.iter().enumerate() {
                        let (id, texts) = (format!("{image_id}_{k}"), vec![c.clone()]);
                        out.rows.push(SynthRow { id, image_id, texts, extra: extra.clone(), image });
                    }
                }
                out.texts.extend(caps.iter().map(|c| format!(" {c}")));
            }
            _ => {
                let count = 2 + rng.below(2);
                let s = scene(rng, args.image_size, count);
                out.images.push((image_id, png(&render(&s))?));
                for k in 0..s.objects.len() {
                    let e = expression(args.task, &s, k, rng);
                    out.texts.push(super::refcoco::prompt(&e));
                    let (id, extra) = (format!("{image_id}_{k}"), s.objects[k].region_coord());
                    out.rows.push(SynthRow { id, image_id, texts: vec![e], extra, image });
                }
            }
        }
    }
    // Shuffled rows, as OFA ships its TSVs.
    if !valid {
        rng.shuffle(&mut out.rows);
    }
    Ok(out)
}

impl Split {
    /// The reference's TSV.
    fn write_tsv(&self, path: &Path) -> Result<()> {
        let b64: Vec<String> =
            self.images.iter().map(|(_, png)| base64::engine::general_purpose::STANDARD.encode(png)).collect();
        write_lines(
            path,
            self.rows
                .iter()
                .map(|r| format!("{}\t{}\t{}\t{}\t{}", r.id, r.image_id, r.texts.join("&&"), r.extra, b64[r.image])),
        )
    }

    /// What `elfin-train prepare` reads: `images/ID.png` and JSON Lines, one line per caption or expression.
    fn write_annotations(&self, task: SynthTask, dir: &Path, path: &Path) -> Result<()> {
        let images = dir.join("images");
        std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
        for (id, png) in &self.images {
            let file = images.join(format!("{id}.png"));
            std::fs::write(&file, png).with_context(|| format!("writing {}", file.display()))?;
        }
        let lines = self.rows.iter().flat_map(|r| {
            r.texts.iter().map(move |t| {
                let mut line = serde_json::json!({"image": format!("{}.png", r.image_id), "image_id": r.image_id});
                if task == SynthTask::Caption {
                    line["caption"] = t.as_str().into();
                } else {
                    let corners: Vec<f64> = r.extra.split(',').filter_map(|c| c.parse().ok()).collect();
                    line["expression"] = t.as_str().into();
                    line["box"] = corners.into();
                }
                // A per-image row's id is its image id.
                if !self.per_image {
                    line["id"] = r.id.as_str().into();
                }
                line.to_string()
            })
        });
        write_lines(path, lines)
    }
}

fn write_lines(path: &Path, lines: impl Iterator<Item = String>) -> Result<()> {
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    for line in lines {
        writeln!(f, "{line}")?;
    }
    f.flush().with_context(|| format!("writing {}", path.display()))
}

/// GPT-2's byte → printable character table (the byte-level BPE alphabet).
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            }
        })
        .collect()
}

/// Writes encoder.json, vocab.bpe and dict.txt for `texts` into `dir`: the
/// 256 byte symbols, then every pre-tokenised piece of the texts as a chain
/// of prefix merges, so each word encodes to one token. Merges of pieces
/// that start with a space come first: those pieces then always merge whole.
pub fn write_bpe(dir: &Path, texts: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut pieces = BTreeMap::new();
    for t in texts {
        for p in gpt2_pieces(t)? {
            pieces.entry((!p.starts_with('Ġ'), p.chars().count(), p.clone())).or_insert(());
        }
    }
    let mut vocab: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    let mut known: HashSet<String> = vocab.iter().cloned().collect();
    let mut merges = String::from("#version: 0.2\n");
    for (_, _, piece) in pieces.keys() {
        let chars: Vec<char> = piece.chars().collect();
        for k in 2..=chars.len() {
            let merged: String = chars[..k].iter().collect();
            if known.insert(merged.clone()) {
                let left: String = chars[..k - 1].iter().collect();
                writeln!(merges, "{left} {}", chars[k - 1])?;
                vocab.push(merged);
            }
        }
    }
    let encoder: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(id, t)| (t.clone(), id.into())).collect();
    std::fs::write(dir.join("encoder.json"), serde_json::to_string(&encoder)?)?;
    std::fs::write(dir.join("vocab.bpe"), merges)?;

    // dict.txt: the GPT-2-style ids the texts use, most frequent first (as fairseq builds it).
    std::fs::write(dir.join("dict.txt"), "")?;
    let tok = Tokenizer::from_bpe_dir(dir, 0, 0)?;
    let mut counts: HashMap<u32, u64> = HashMap::new();
    for t in texts {
        for id in tok.gpt2_ids(t)? {
            *counts.entry(id).or_default() += 1;
        }
    }
    let mut ids: Vec<(u32, u64)> = counts.into_iter().collect();
    ids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let dict: String = ids.iter().map(|(id, n)| format!("{id} {n}\n")).collect();
    std::fs::write(dir.join("dict.txt"), dict)?;
    Ok(())
}

pub fn run(args: &SynthArgs) -> Result<()> {
    let mut rng = Rng::new(args.seed);
    let train = make_split(args, args.train, false, &mut rng, 100_000)?;
    let val = make_split(args, args.val, true, &mut rng, 900_000)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    for (name, split) in [("train", &train), ("val", &val)] {
        if args.as_annotations {
            split.write_annotations(args.task, &args.out, &args.out.join(format!("{name}.jsonl")))?;
        } else {
            split.write_tsv(&args.out.join(format!("{name}.tsv")))?;
        }
    }
    let mut texts = vec![super::caption::PROMPT.to_string()];
    texts.extend(train.texts.iter().chain(&val.texts).cloned());
    write_bpe(&args.out.join("bpe"), &texts)?;
    eprintln!(
        "elfin-train synth: wrote {} training and {} validation rows to {}",
        train.rows.len(),
        val.rows.len(),
        args.out.display()
    );
    Ok(())
}
