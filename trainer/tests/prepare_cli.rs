//! `elfin-train prepare` through the binary: hand-made COCO, Karpathy,
//! refer-pickle and JSON Lines inputs to TSV files that the training loader
//! reads back with the same image bytes, text and box; every kind of bad
//! input; and the synthetic demo data prepared from its annotations trains
//! to the same model as the TSVs `synth` writes directly.

mod train_common;

use elfin_trainer::data::boxes::parse_region_coord;
use elfin_trainer::data::image::{decode_base64, decode_rgb};
use elfin_trainer::data::synth::write_bpe;
use elfin_trainer::data::tsv::TsvFile;
use elfin_trainer::data::{DataArgs, EvalRef, Split, Task, TaskKind};
use elfin_trainer::eval::document_frequency::DocumentFrequency;
use elfin_trainer::eval::text_norm::normalize_caption;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};
use train_common::{max_param_diff, run_trainer, train_args, TRAINER};

const PYTHON: &str = "/opt/elfin/venv/bin/python";

fn pixels(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + seed) as u8, (y * 5 + seed) as u8, ((x + y) * 3) as u8]))
}

fn jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_size(w as usize, h as usize);
    c.set_quality(90.0);
    let mut c = c.start_compress(Vec::new()).unwrap();
    c.write_scanlines(pixels(w, h, seed).as_raw()).unwrap();
    c.finish().unwrap()
}

fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    pixels(w, h, seed).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn jsonl(lines: &[serde_json::Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// `dir/p.png` with one caption in `dir/caps.jsonl`.
fn one_captioned_image(dir: &Path, png: Vec<u8>) {
    write(&dir.join("p.png"), png);
    write(&dir.join("caps.jsonl"), jsonl(&[json!({"image": "p.png", "caption": "a picture"})]));
}

fn prepare(args: &[&str]) -> Output {
    Command::new(TRAINER).arg("prepare").args(args).output().expect("elfin-train runs")
}

/// Runs `prepare` and returns its stderr; it must succeed.
fn prepared(args: &[&str]) -> String {
    let out = prepare(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "prepare {args:?} failed:\n{stderr}");
    stderr
}

/// Every row's five columns, read by the training loader's TSV reader.
fn rows(path: &Path) -> Vec<Vec<String>> {
    let tsv = TsvFile::open(path, &[0, 1, 2, 3, 4], None).unwrap();
    (0..tsv.len()).map(|i| tsv.row(i).unwrap().fields).collect()
}

fn image_of(row: &[String]) -> Vec<u8> {
    decode_base64(&row[4]).unwrap()
}

/// Preprocesses every row of `tsv` as training does (a BPE of `texts` beside
/// it) and returns what evaluation would get of each.
fn load_every_row(tsv: &Path, task: TaskKind, split: Split, texts: &[&str]) -> Vec<EvalRef> {
    let bpe = tsv.with_extension("bpe");
    let mut all: Vec<String> = texts.iter().map(|t| format!(" {}", t.to_lowercase())).collect();
    all.push(elfin_trainer::data::caption::PROMPT.into());
    write_bpe(&bpe, &all).unwrap();
    let p = tsv.display();
    let args = DataArgs {
        data: Some(format!("{p},{p}")),
        task,
        selected_cols: None,
        bpe_dir: Some(bpe),
        max_src_length: 80,
        max_tgt_length: 20,
        patch_image_size: 16,
        max_image_size: 16,
        num_bins: 100,
        code_dict_size: 0,
        num_workers: 0,
        skip_bad_rows: false,
        imagenet_default_mean_and_std: false,
        index_cache_dir: None,
    };
    let dataset = Task::new(&args).unwrap().load(split, 1).unwrap();
    (0..dataset.len()).map(|i| dataset.get(i).unwrap().eval_ref).collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn coco_captions_round_trip_in_both_row_layouts_with_references_and_document_frequencies() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, out) = (tmp.path(), tmp.path().join("out"));
    let files = [("a.jpg", jpeg(40, 30, 1)), ("b.png", png(20, 24, 2)), ("sub/c.jpg", jpeg(16, 16, 3))];
    for (name, bytes) in &files {
        write(&dir.join("images").join(name), bytes);
    }
    let captions = [
        (101, 11, "A dog\truns."),
        (102, 12, "a cat"),
        (103, 11, "the dog, running"),
        (104, 13, "three birds"),
        (105, 12, "a sleeping cat"),
    ];
    let coco = json!({
        "info": {}, "licenses": [],
        "images": [{"id": 11, "file_name": "a.jpg", "width": 40, "height": 30}, {"id": 12, "file_name": "b.png"}, {"id": 13, "file_name": "sub/c.jpg"}],
        "annotations": captions.iter().map(|(id, image, c)| json!({"id": id, "image_id": image, "caption": c})).collect::<Vec<_>>(),
    });
    write(&dir.join("captions_train.json"), coco.to_string());
    let (ann, images) = (dir.join("captions_train.json"), dir.join("images"));
    let (ann, images) = (ann.to_str().unwrap(), images.to_str().unwrap());
    let bytes_of = |image_id: i32| &files[(image_id - 11) as usize].1;

    let train = out.join("train.tsv");
    let stderr = prepared(&[
        "caption",
        "--annotations",
        ann,
        "--images",
        images,
        "--out",
        train.to_str().unwrap(),
        "--threads",
        "2",
    ]);
    assert!(
        stderr.contains("images/s"),
        "a plain progress line with the rate when stderr is not a terminal:\n{stderr}"
    );
    let got = rows(&train);
    assert_eq!(got.len(), 5);
    // Grouped by image, in the order of the file's images.
    let by_image = [captions[0], captions[2], captions[1], captions[4], captions[3]];
    for (row, (id, image, text)) in got.iter().zip(&by_image) {
        assert_eq!(row[..4], [id.to_string(), image.to_string(), text.replace('\t', " "), String::new()]);
        assert_eq!(&image_of(row), bytes_of(*image), "row {id} holds the image file's own bytes");
    }
    let texts: Vec<&str> = captions.iter().map(|c| c.2).collect();
    assert_eq!(load_every_row(&train, TaskKind::Caption, Split::Train, &texts).len(), 5);

    let val = out.join("val.tsv");
    prepared(&[
        "caption",
        "--annotations",
        ann,
        "--images",
        images,
        "--out",
        val.to_str().unwrap(),
        "--rows",
        "per-image",
    ]);
    let got = rows(&val);
    let expected = [("11", "A dog runs.&&the dog, running"), ("12", "a cat&&a sleeping cat"), ("13", "three birds")];
    assert_eq!(got.len(), 3);
    for (row, (id, text)) in got.iter().zip(expected) {
        assert_eq!(row[..3], [id, id, text]);
        assert_eq!(&image_of(row), bytes_of(id.parse().unwrap()));
    }
    let refs = load_every_row(&val, TaskKind::Caption, Split::Valid, &texts);
    assert_eq!(refs[0], EvalRef::Caption { captions: vec!["A dog runs".into(), "the dog running".into()] });

    let coco_refs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("val.coco.json")).unwrap()).unwrap();
    assert_eq!(coco_refs["type"], "captions");
    assert_eq!(
        coco_refs["images"],
        json!([{"id": 11, "file_name": "a.jpg"}, {"id": 12, "file_name": "b.png"}, {"id": 13, "file_name": "sub/c.jpg"}])
    );
    let anns = coco_refs["annotations"].as_array().unwrap();
    assert_eq!(anns.len(), 5);
    assert_eq!(anns[1], json!({"id": 103, "image_id": 11, "caption": "the dog, running"}));
    let df = DocumentFrequency::load(&out.join("val.df.json")).unwrap();
    let per_image: Vec<Vec<String>> =
        expected.iter().map(|(_, t)| t.split("&&").map(normalize_caption).collect()).collect();
    assert_eq!(df, DocumentFrequency::from_references(&per_image));
    assert_eq!((df.ref_len, df.get("dog"), df.get("a")), (3.0, 1.0, 1.0));
}

#[test]
fn karpathy_splits_pick_images_found_under_their_filepath() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let imgs =
        [("train2014", "x.jpg", 501, "train"), ("val2014", "y.jpg", 502, "val"), ("val2014", "z.jpg", 503, "restval")];
    for (k, (folder, name, ..)) in imgs.iter().enumerate() {
        write(&dir.join("coco").join(folder).join(name), jpeg(24, 20, k as u32));
    }
    let sentence = |id: u32, raw: &str| json!({"raw": raw, "sentid": id, "tokens": raw.split(' ').collect::<Vec<_>>(), "imgid": 0});
    let karpathy = json!({"dataset": "coco", "images": [
        {"filepath": "train2014", "filename": "x.jpg", "imgid": 0, "cocoid": 501, "split": "train", "sentids": [1, 2],
         "sentences": [sentence(1, "A red bus."), sentence(2, "a bus on a road")]},
        {"filepath": "val2014", "filename": "y.jpg", "imgid": 1, "cocoid": 502, "split": "val",
         "sentences": [sentence(3, "two people"), sentence(4, "people walking")]},
        {"filepath": "val2014", "filename": "z.jpg", "imgid": 2, "cocoid": 503, "split": "restval",
         "sentences": [sentence(5, "a kite")]},
    ]});
    write(&dir.join("dataset_coco.json"), karpathy.to_string());
    let ann = dir.join("dataset_coco.json");
    let common = |out: &str| -> Vec<String> {
        [
            "caption",
            "--annotations",
            ann.to_str().unwrap(),
            "--images",
            dir.join("coco").to_str().unwrap(),
            "--out",
            dir.join(out).to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |out: &str, split: &str| {
        let mut args = common(out);
        args.extend(["--split".into(), split.into()]);
        prepared(&args.iter().map(String::as_str).collect::<Vec<_>>());
        rows(&dir.join(out))
    };

    // Validation and test splits default to one row per image.
    let val = run("val.tsv", "val");
    assert_eq!(val.len(), 1);
    assert_eq!(val[0][..3], ["502", "502", "two people&&people walking"]);
    assert_eq!(image_of(&val[0]), std::fs::read(dir.join("coco/val2014/y.jpg")).unwrap());

    let train = run("train.tsv", "train,restval");
    let got: Vec<[&str; 3]> = train.iter().map(|r| [r[0].as_str(), r[1].as_str(), r[2].as_str()]).collect();
    assert_eq!(got, [["1", "501", "A red bus."], ["2", "501", "a bus on a road"], ["5", "503", "a kite"]]);
    assert_eq!(image_of(&train[2]), std::fs::read(dir.join("coco/val2014/z.jpg")).unwrap());

    let mut args = common("none.tsv");
    args.extend(["--split".into(), "testA".into()]);
    let out = prepare(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no image of split testA") && stderr.contains("restval, train, val"),
        "{stderr}"
    );
}

#[test]
fn refer_pickle_with_instances_round_trips_boxes_and_matches_its_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(&dir.join("train2014/COCO_train2014_501.jpg"), jpeg(48, 40, 1));
    write(&dir.join("train2014/COCO_train2014_502.jpg"), png(30, 30, 2));
    // The toolkit's layout: refs(unc).p with instances.json beside it.
    let refs = dir.join("refcoco/refs(unc).p");
    std::fs::create_dir_all(refs.parent().unwrap()).unwrap();
    // Written as Python 2 wrote the toolkit's files: strings as byte strings (SHORT_BINSTRING), UTF-8.
    let script = r#"
import struct, sys
def py2(v):
    if isinstance(v, int): return b"J" + struct.pack("<i", v)
    if isinstance(v, str):
        b = v.encode("utf-8")
        return b"U" + bytes([len(b)]) + b
    if isinstance(v, list): return b"](" + b"".join(py2(x) for x in v) + b"e"
    return b"}(" + b"".join(py2(k) + py2(x) for k, x in v.items()) + b"u"
s = lambda i, t: {"sent_id": i, "sent": t, "raw": t.upper() + "!", "tokens": t.split()}
refs = [
    {"ref_id": 7, "ann_id": 70, "image_id": 501, "split": "train", "category_id": 1, "sent_ids": [1, 2],
     "file_name": "COCO_train2014_501_70.jpg", "sentences": [s(1, "man on left"), s(2, "left guy in caf\u00e9")]},
    {"ref_id": 8, "ann_id": 80, "image_id": 502, "split": "val", "sentences": [s(3, "cat")]},
    {"ref_id": 9, "ann_id": 90, "image_id": 501, "split": "train", "sentences": [s(4, "right dog")]},
]
open(sys.argv[1], "wb").write(b"\x80\x02" + py2(refs) + b".")
"#;
    let status = Command::new(PYTHON).args(["-c", script]).arg(&refs).status().expect("the venv's python runs");
    assert!(status.success());
    let instances = json!({
        "images": [{"id": 501, "file_name": "COCO_train2014_501.jpg", "width": 48, "height": 40}, {"id": 502, "file_name": "COCO_train2014_502.jpg"}],
        "annotations": [
            {"id": 70, "image_id": 501, "bbox": [1.5, 2.25, 10.0, 12.5], "category_id": 1, "segmentation": [[1, 2, 3, 4]], "area": 10.0},
            {"id": 80, "image_id": 502, "bbox": [0, 0, 30, 30]},
            {"id": 90, "image_id": 501, "bbox": [20.0, 3.0, 10.1, 7.33]},
        ],
    });
    write(&dir.join("refcoco/instances.json"), instances.to_string());
    let images = dir.join("train2014");
    let tsv = dir.join("refcoco_train.tsv");
    prepared(&[
        "refcoco",
        "--annotations",
        refs.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--out",
        tsv.to_str().unwrap(),
        "--split",
        "train",
    ]);
    let got = rows(&tsv);
    let ids: Vec<[&str; 3]> = got.iter().map(|r| [r[0].as_str(), r[1].as_str(), r[2].as_str()]).collect();
    assert_eq!(ids, [["7_0", "501", "man on left"], ["7_1", "501", "left guy in café"], ["9_0", "501", "right dog"]]);
    // Boxes are COCO's x,y,w,h turned into corners, as the f32 the loader reads.
    let boxes = [
        [1.5f32, 2.25, 11.5, 14.75],
        [1.5, 2.25, 11.5, 14.75],
        [20.0, 3.0, (20.0f64 + 10.1) as f32, (3.0f64 + 7.33) as f32],
    ];
    for (row, b) in got.iter().zip(&boxes) {
        assert_eq!(&parse_region_coord(&row[3]).unwrap(), b, "{}", row[3]);
        assert_eq!(image_of(row), std::fs::read(images.join("COCO_train2014_501.jpg")).unwrap());
    }
    let loaded =
        load_every_row(&tsv, TaskKind::Refcoco, Split::Train, &["man on left", "left guy in café", "right dog"]);
    for (r, b) in loaded.iter().zip(&boxes) {
        assert!(matches!(r, EvalRef::Region { region_coord, .. } if region_coord == b), "{r:?}");
    }

    // The script alone converts the pickle to JSON, which prepare reads to the same file.
    let json_refs = dir.join("refs.json");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/refer_to_json.py");
    assert!(Command::new(PYTHON).arg(script).arg(&refs).arg(&json_refs).status().unwrap().success());
    let from_json = dir.join("from_json.tsv");
    let instances = dir.join("refcoco/instances.json");
    prepared(&[
        "refcoco",
        "--annotations",
        json_refs.to_str().unwrap(),
        "--instances",
        instances.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--out",
        from_json.to_str().unwrap(),
        "--split",
        "train",
    ]);
    assert_eq!(std::fs::read(&tsv).unwrap(), std::fs::read(&from_json).unwrap());
}

#[test]
fn every_kind_of_bad_input_stops_with_file_record_and_field_or_is_skipped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(&dir.join("img/a.jpg"), jpeg(40, 30, 1));
    write(&dir.join("img/b.png"), png(20, 20, 2));
    write(&dir.join("img/junk.jpg"), b"not an image at all");
    let good = json!({"image": "a.jpg", "expression": "left thing", "box": [1, 2, 10, 20], "id": "g1"});
    let last = json!({"image": "b.png", "expression": "the square", "box": [0, 0, 20, 20], "id": "g2"});
    // (bad line, field named, words of the message)
    let bad = [
        (json!({"image": "nope.jpg", "expression": "x", "box": [0, 0, 1, 1]}), "image", "nope.jpg"),
        (json!({"image": "junk.jpg", "expression": "x", "box": [0, 0, 1, 1]}), "image", "is not an image"),
        (json!({"image": "a.jpg", "expression": "x", "box": [0, 0, 41, 10]}), "box", "outside the 40×30 image"),
        (json!({"image": "a.jpg", "expression": "  ", "box": [0, 0, 1, 1]}), "expression", "empty"),
        (json!({"image": "b.png", "expression": "x", "box": [0, 0, 1, 1], "id": "g1"}), "id", "duplicate id \"g1\""),
    ];
    let ann = dir.join("refs.jsonl");
    let out_dir = dir.join("out");
    let out = out_dir.join("data.tsv");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "refcoco",
            "--annotations",
            ann.to_str().unwrap(),
            "--images",
            dir.join("img").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |extra: &[&str]| prepare(&args(extra).iter().map(String::as_str).collect::<Vec<_>>());

    // An earlier, complete output survives a failed run: nothing is written until the end.
    write(&out, "an earlier run's file\n");
    for (line, field, words) in &bad {
        std::fs::write(&ann, jsonl(&[good.clone(), line.clone(), last.clone()])).unwrap();
        let result = run(&[]);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{stderr}");
        let named = format!("{}: line 2: {field}: ", ann.display());
        assert!(
            stderr.contains(&named) && stderr.contains(words) && stderr.contains("--skip-bad"),
            "expected {named}…{words}:\n{stderr}"
        );
        assert_eq!(files_in(&out_dir), ["data.tsv"], "no partial file is left behind");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "an earlier run's file\n");
    }

    let mut all = vec![good.clone()];
    all.extend(bad.iter().map(|b| b.0.clone()));
    all.push(last.clone());
    std::fs::write(&ann, jsonl(&all)).unwrap();
    let result = run(&["--skip-bad"]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success() && stderr.contains("skipped 5 bad records"), "{stderr}");
    let ids: Vec<String> = rows(&out).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, ["g1", "g2"]);
    let report = std::fs::read_to_string(out_dir.join("data.skipped.txt")).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 5, "{report}");
    for (k, (_, field, words)) in bad.iter().enumerate() {
        let named = format!("line {}: {field}: ", k + 2);
        assert!(lines.iter().any(|l| l.contains(&named) && l.contains(words)), "{named}…{words} not in:\n{report}");
    }

    // Captions: an empty caption and a duplicate annotation id in a COCO file.
    let coco = json!({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [
        {"id": 5, "image_id": 1, "caption": "a picture"}, {"id": 6, "image_id": 1, "caption": ""}, {"id": 5, "image_id": 1, "caption": "again"}]});
    let coco_path = dir.join("captions.json");
    write(&coco_path, coco.to_string());
    let img = dir.join("img");
    let cap = |extra: &[&str]| {
        let mut a = vec![
            "caption",
            "--annotations",
            coco_path.to_str().unwrap(),
            "--images",
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend(extra);
        prepare(&a)
    };
    let stderr = String::from_utf8_lossy(&cap(&[]).stderr).into_owned();
    assert!(stderr.contains("captions.json: annotations[1] (id 6): caption: empty text"), "{stderr}");
    assert!(cap(&["--skip-bad"]).status.success());
    let report = std::fs::read_to_string(out_dir.join("data.skipped.txt")).unwrap();
    assert!(
        report.contains("annotations[2] (id 5): id: duplicate id \"5\": ") && report.contains("annotations[0] (id 5)"),
        "{report}"
    );
    assert_eq!(rows(&out).len(), 1);
}

#[test]
fn images_are_re_encoded_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    one_captioned_image(dir, png(20, 12, 4));
    let run = |reencode: &str| {
        let out = dir.join(format!("{reencode}.tsv"));
        prepared(&[
            "caption",
            "--annotations",
            dir.join("caps.jsonl").to_str().unwrap(),
            "--images",
            dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--reencode",
            reencode,
        ]);
        let row = rows(&out).remove(0);
        assert_eq!(row[..2], ["1_0", "1"], "ids of JSON Lines without ids");
        image_of(&row)
    };
    let original = decode_rgb(&png(20, 12, 4)).unwrap();
    let as_png = run("png");
    assert_eq!(decode_rgb(&as_png).unwrap(), original, "PNG is lossless");
    let as_jpeg = run("jpeg");
    assert!(as_jpeg.starts_with(&[0xFF, 0xD8]));
    assert_eq!(decode_rgb(&as_jpeg).unwrap().dimensions(), (20, 12));
}

#[test]
fn synthetic_data_prepared_from_its_annotations_trains_to_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let synth = |task: &str, out: &Path, extra: &[&str]| {
        let args = ["synth", "--task", task, "--train", "40", "--val", "8", "--image-size", "32", "--out"];
        let status = Command::new(TRAINER).args(args).arg(out).args(extra).output().unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    };
    for task in ["caption", "refcoco"] {
        let (direct, raw) = (tmp.path().join(format!("direct-{task}")), tmp.path().join(format!("prepared-{task}")));
        synth(task, &direct, &[]);
        synth(task, &raw, &["--as-annotations"]);
        for (split, layout) in [("train", "per-caption"), ("val", "per-image")] {
            let (ann, out) = (raw.join(format!("{split}.jsonl")), raw.join(format!("{split}.tsv")));
            let mut args = vec![task, "--annotations", ann.to_str().unwrap(), "--images"];
            let images = raw.join("images");
            args.extend([images.to_str().unwrap(), "--out", out.to_str().unwrap()]);
            if task == "caption" {
                args.extend(["--rows", layout]);
            }
            prepared(&args);
            let (want, got) = (rows(&direct.join(format!("{split}.tsv"))), rows(&out));
            assert_eq!(want.len(), got.len());
            for (w, g) in want.iter().zip(&got) {
                assert_eq!([&w[0], &w[1], &w[2], &w[4]], [&g[0], &g[1], &g[2], &g[4]], "{task} {split}");
                if task == "refcoco" {
                    assert_eq!(parse_region_coord(&w[3]).unwrap(), parse_region_coord(&g[3]).unwrap());
                }
            }
        }
    }
    let (a, b) = (tmp.path().join("run-direct"), tmp.path().join("run-prepared"));
    run_trainer(&train_args(&tmp.path().join("direct-caption"), &a, &["--max-update=3"]));
    run_trainer(&train_args(&tmp.path().join("prepared-caption"), &b, &["--max-update=3"]));
    assert_eq!(max_param_diff(&a.join("checkpoint_last.safetensors"), &b.join("checkpoint_last.safetensors")), 0.0);
}

#[test]
fn progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    one_captioned_image(dir, png(8, 8, 1));
    let args = format!(
        "{TRAINER} prepare caption --annotations {} --images {} --out {}",
        dir.join("caps.jsonl").display(),
        dir.display(),
        dir.join("out.tsv").display()
    );
    // `script` runs the command on a pseudo-terminal.
    let tty = Command::new("script").args(["-qec", &args, "/dev/null"]).output().expect("script (util-linux) runs");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(shown.contains("images/s, ETA") && shown.contains('\u{2588}'), "a bar with rate and ETA:\n{shown}");
    let plain = Command::new("sh").args(["-c", &args]).output().unwrap();
    let shown = String::from_utf8_lossy(&plain.stderr);
    assert!(shown.contains("prepare caption: 1/1 images (100%), ") && !shown.contains('\u{2588}'), "{shown}");
}
