//! Reproduces the reference's preprocessing vectors (shared/oracles/preprocess):
//! token ids, bins, ratios and boxes exactly; resized images exactly from the
//! reference's decoded pixels (Pillow's integer bicubic); whole pipeline
//! images exactly too (JPEG through libjpeg-turbo's decoder, as PIL).

mod data_common;

use elfin_trainer::data::resize::resize_bicubic;
use elfin_trainer::data::{DataArgs, EvalRef, Split, Task, TaskKind};
use image::RgbImage;
use std::collections::HashMap;
use tch::{Kind, Tensor};

fn oracle(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data_common::oracle_dir().join(format!("{name}.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

fn args(task: TaskKind, cache: &std::path::Path) -> DataArgs {
    let (file, patch) = match task {
        TaskKind::Caption => ("caption.tsv", 480),
        TaskKind::Refcoco => ("refcoco.tsv", 512),
    };
    DataArgs {
        data: Some(data_common::oracle_dir().join(file).to_str().unwrap().to_string()),
        task,
        selected_cols: None,
        bpe_dir: Some(data_common::bpe_dir()),
        max_src_length: 80,
        max_tgt_length: 20,
        patch_image_size: patch,
        max_image_size: 512,
        num_bins: 1000,
        code_dict_size: 8192,
        num_workers: 0,
        skip_bad_rows: false,
        imagenet_default_mean_and_std: false,
        index_cache_dir: Some(cache.to_path_buf()),
    }
}

fn ids(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.flatten(0, -1)).unwrap()
}

fn u8_image(t: &Tensor) -> RgbImage {
    let (h, w) = (t.size()[0] as u32, t.size()[1] as u32);
    RgbImage::from_raw(w, h, Vec::<u8>::try_from(&t.flatten(0, -1)).unwrap()).unwrap()
}

fn check(task: TaskKind, split: Split) {
    let name = format!(
        "{}_{}",
        if task == TaskKind::Caption { "caption" } else { "refcoco" },
        if split == Split::Train { "train" } else { "valid" }
    );
    let o = oracle(&name);
    let cache = tempfile::tempdir().unwrap();
    let task_ = Task::new(&args(task, cache.path())).unwrap();
    let ds = task_.load(split, 1).unwrap();
    assert_eq!(ds.len(), 6);
    let samples: Vec<_> = (0..6).map(|i| ds.get(i).unwrap()).collect();
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s.source, ids(&o[&format!("item.{i}.source")]), "{name} row {i} source");
        assert_eq!(s.target, ids(&o[&format!("item.{i}.target")]), "{name} row {i} target");
        assert_eq!(
            s.prev_output_tokens,
            ids(&o[&format!("item.{i}.prev_output_tokens")]),
            "{name} row {i} prev_output_tokens"
        );
        if let EvalRef::Region { region_coord, w_resize_ratio, h_resize_ratio } = &s.eval_ref {
            let f = |k: &str| Vec::<f32>::try_from(&o[&format!("item.{i}.{k}")].flatten(0, -1)).unwrap();
            assert_eq!(region_coord.to_vec(), f("region_coord"), "{name} row {i} region");
            assert_eq!(vec![*w_resize_ratio], f("w_resize_ratio"), "{name} row {i}");
            assert_eq!(vec![*h_resize_ratio], f("h_resize_ratio"), "{name} row {i}");
            let norm = elfin_trainer::data::boxes::normalise_box(*region_coord, *w_resize_ratio, *h_resize_ratio, 512);
            assert_eq!(norm.to_vec(), f("transform.boxes_out"), "{name} row {i} boxes_out");
            let pre: Vec<f32> = norm.iter().map(|c| c * 999.0).collect();
            assert_eq!(pre, f("transform.boxes_out_times_num_bins_minus_1"), "{name} row {i}");
        }
    }
    let batch = ds.collate(&samples);
    let ni = &batch.net_input;
    assert_eq!(ids(&ni.src_tokens), ids(&o["batch.net_input.src_tokens"]), "{name} batch src_tokens");
    assert_eq!(ni.src_tokens.size(), o["batch.net_input.src_tokens"].size());
    assert_eq!(ids(&ni.src_lengths), ids(&o["batch.net_input.src_lengths"]));
    assert_eq!(ids(&ni.prev_output_tokens), ids(&o["batch.net_input.prev_output_tokens"]));
    assert_eq!(ids(&batch.target), ids(&o["batch.target"]));
    assert_eq!(batch.target.size(), o["batch.target"].size());
    assert_eq!(ids(&ni.patch_masks.to_kind(Kind::Int64)), vec![1; 6]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data_common::oracle_dir().join(format!("{name}.json"))).unwrap())
            .unwrap();
    assert_eq!(batch.ntokens, json["batch"]["ntokens"].as_i64().unwrap());
    assert_eq!(batch.nsentences, 6);
    let want_ids: Vec<String> = (0..6).map(|i| json["items"][i]["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(batch.ids, want_ids);

    if split == Split::Valid {
        let want = &o["batch.net_input.patch_images_u8"];
        // The model's floats are exactly (k/255 − 0.5)/0.5 of the reference's u8 pixels.
        let want_f = ((want.to_kind(Kind::Float) / 255.0) - 0.5) / 0.5;
        for (i, s) in samples.iter().enumerate() {
            let want_i = want.get(i as i64).permute([1, 2, 0]).contiguous();
            // Resize alone, from the reference's own decoded pixels: exact.
            let decoded = u8_image(&o[&format!("image.{i}.decoded_rgb")]);
            let p = s.image.width();
            let resized = resize_bicubic(&decoded, p, p);
            assert!(
                resized.as_raw() == &Vec::<u8>::try_from(&want_i.flatten(0, -1)).unwrap(),
                "{name} row {i}: Pillow bicubic resize differs"
            );
            let got = Tensor::from_slice(s.image.as_raw()).view([p as i64, p as i64, 3]).to_kind(Kind::Int16);
            let absdiff = (got - want_i.to_kind(Kind::Int16)).abs();
            let diff = absdiff.max().int64_value(&[]);
            assert_eq!(diff, 0, "{name} row {i}: pixels differ");
            let got_f = ni.patch_images.get(i as i64);
            assert!(got_f.equal(&want_f.get(i as i64)), "{name} row {i}: normalised image differs");
        }
    }
}

#[test]
fn caption_train_matches_the_reference() {
    check(TaskKind::Caption, Split::Train);
}

#[test]
fn caption_valid_matches_the_reference() {
    check(TaskKind::Caption, Split::Valid);
}

#[test]
fn refcoco_train_matches_the_reference() {
    check(TaskKind::Refcoco, Split::Train);
}

#[test]
fn refcoco_valid_matches_the_reference() {
    check(TaskKind::Refcoco, Split::Valid);
}

#[test]
fn decoded_pixels_match_pillow() {
    let cache = tempfile::tempdir().unwrap();
    for task in [TaskKind::Caption, TaskKind::Refcoco] {
        let name = if task == TaskKind::Caption { "caption_valid" } else { "refcoco_valid" };
        let o = oracle(name);
        let t = Task::new(&args(task, cache.path())).unwrap();
        let ds = t.load(Split::Valid, 1).unwrap();
        for i in 0..6 {
            let row = ds.file().row(i).unwrap();
            let bytes = elfin_trainer::data::image::decode_base64(&row.fields[1]).unwrap();
            let img = elfin_trainer::data::image::decode_rgb(&bytes).unwrap();
            let want = u8_image(&o[&format!("image.{i}.decoded_rgb")]);
            assert_eq!(img.dimensions(), want.dimensions(), "{name} row {i}");
            let differing = img.as_raw().iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "{name} row {i}: decoded pixels differ");
        }
    }
}

#[test]
fn truncated_jpeg_decodes_and_garbage_is_an_error() {
    let cache = tempfile::tempdir().unwrap();
    let t = Task::new(&args(TaskKind::Caption, cache.path())).unwrap();
    let ds = t.load(Split::Valid, 1).unwrap();
    let row = ds.file().row(0).unwrap();
    let jpeg = elfin_trainer::data::image::decode_base64(&row.fields[1]).unwrap();
    // PIL's LOAD_TRUNCATED_IMAGES accepts a cut file; libjpeg fills the rest.
    let cut = elfin_trainer::data::image::decode_rgb(&jpeg[..jpeg.len() / 2]).unwrap();
    assert_eq!(cut.dimensions(), (640, 480));
    let err = elfin_trainer::data::image::decode_rgb(&[0xFF, 0xD8, 0xFF, 0xC0, 0, 3, 1, 2, 3]).unwrap_err();
    assert!(err.to_string().contains("does not decode"), "{err}");
}
