//! Synthetic data through the whole pipeline: synth → TSV → samples →
//! batches → prefetching loader; bad rows; the row index cache.

mod data_common;

use elfin_trainer::data::boxes::bins_to_box;
use elfin_trainer::data::loader::Loader;
use elfin_trainer::data::synth::{self, SynthArgs, SynthTask};
use elfin_trainer::data::tsv::index_is_current;
use elfin_trainer::data::{BadRow, DataArgs, EvalRef, Split, Task, TaskKind, TrainPlan, ValidPlan};
use std::path::Path;
use std::sync::Arc;

fn make(task: SynthTask, dir: &Path, train: usize, val: usize) {
    synth::run(&SynthArgs { task, out: dir.to_path_buf(), train, val, image_size: 48, seed: 5, as_annotations: false })
        .unwrap();
}

fn args(dir: &Path, task: TaskKind) -> DataArgs {
    DataArgs {
        data: Some(format!("{}/train.tsv,{}/val.tsv", dir.display(), dir.display())),
        task,
        selected_cols: None,
        bpe_dir: Some(dir.join("bpe")),
        max_src_length: 80,
        max_tgt_length: 20,
        patch_image_size: 32,
        max_image_size: 32,
        num_bins: 100,
        code_dict_size: 0,
        num_workers: 2,
        skip_bad_rows: false,
        imagenet_default_mean_and_std: false,
        index_cache_dir: None,
    }
}

#[test]
fn synth_is_deterministic() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    make(SynthTask::Refcocog, a.path(), 10, 3);
    make(SynthTask::Refcocog, b.path(), 10, 3);
    for f in ["train.tsv", "val.tsv", "bpe/encoder.json", "bpe/vocab.bpe", "bpe/dict.txt"] {
        assert_eq!(std::fs::read(a.path().join(f)).unwrap(), std::fs::read(b.path().join(f)).unwrap(), "{f}");
    }
}

#[test]
fn synthetic_captions_round_trip_through_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    make(SynthTask::Caption, dir.path(), 12, 4);
    let task = Task::new(&args(dir.path(), TaskKind::Caption)).unwrap();
    assert!(task.dictionary().len() < 4 + 60 + 1 + 100, "a small vocabulary: {}", task.dictionary().len());
    let train = task.load(Split::Train, 1).unwrap();
    assert_eq!(train.len(), 60, "five lines per training image");
    let tsv = std::fs::read_to_string(dir.path().join("train.tsv")).unwrap();
    for (i, line) in tsv.lines().enumerate() {
        let caption = line.split('\t').nth(2).unwrap();
        let s = train.get(i).unwrap();
        assert_eq!(task.tokenizer().decode(&s.target).unwrap(), format!(" {caption}"));
        assert!(!s.target.contains(&3), "no <unk> in {caption:?}");
        assert_eq!(s.eval_ref, EvalRef::Caption { captions: vec![caption.to_string()] });
        assert_eq!(s.image.dimensions(), (32, 32));
    }
    let valid = task.load(Split::Valid, 1).unwrap();
    assert_eq!(valid.len(), 4);
    let s = valid.get(0).unwrap();
    let EvalRef::Caption { captions } = &s.eval_ref else { panic!("caption refs") };
    assert_eq!(captions.len(), 5);

    let samples: Vec<_> = (0..5).map(|i| train.get(i).unwrap()).collect();
    let batch = train.collate(&samples);
    assert_eq!(batch.net_input.patch_images.size(), vec![5, 3, 32, 32]);
    assert_eq!(batch.nsentences, 5);
    let longest = samples.iter().map(|s| s.target.len()).max().unwrap() as i64;
    assert_eq!(batch.target.size(), vec![5, longest]);
    assert_eq!(batch.ntokens, samples.iter().map(|s| s.target.len() as i64).sum::<i64>());
    let max = batch.net_input.patch_images.abs().max().double_value(&[]);
    assert!(max <= 1.0, "pixels in [-1, 1]");
}

#[test]
fn synthetic_boxes_survive_bins_within_one_bin() {
    for kind in [SynthTask::Refcoco, SynthTask::Refcocoplus, SynthTask::Refcocog] {
        let dir = tempfile::tempdir().unwrap();
        make(kind, dir.path(), 10, 3);
        let task = Task::new(&args(dir.path(), TaskKind::Refcoco)).unwrap();
        let dict = task.dictionary();
        let ds = task.load(Split::Train, 1).unwrap();
        for i in 0..ds.len() {
            let s = ds.get(i).unwrap();
            assert_eq!(s.target.len(), 5);
            let bins: Vec<i64> = s.target[..4].iter().map(|&t| dict.bin_of(t).expect("a bin token") as i64).collect();
            let EvalRef::Region { region_coord, w_resize_ratio, h_resize_ratio } = s.eval_ref else { panic!() };
            let back = bins_to_box(bins.clone().try_into().unwrap(), 100, 32, w_resize_ratio, h_resize_ratio);
            for k in 0..4 {
                let ratio = if k % 2 == 0 { w_resize_ratio } else { h_resize_ratio };
                let bin_width = 32.0 / 99.0 / ratio;
                assert!(
                    (back[k] - region_coord[k]).abs() <= bin_width,
                    "{kind:?} row {i} coord {k}: {} vs {}",
                    back[k],
                    region_coord[k]
                );
            }
        }
        let text = std::fs::read_to_string(dir.path().join("train.tsv")).unwrap();
        let has_location = text.lines().any(|l| {
            let e = l.split('\t').nth(2).unwrap();
            e.contains("left") || e.contains("right") || e.contains("middle")
        });
        match kind {
            SynthTask::Refcoco => assert!(has_location),
            SynthTask::Refcocoplus => assert!(!has_location, "RefCOCO+ has no location words"),
            _ => {}
        }
    }
}

#[test]
fn the_loader_yields_every_micro_batch_in_order_with_workers() {
    let dir = tempfile::tempdir().unwrap();
    make(SynthTask::Refcoco, dir.path(), 20, 4);
    let task = Task::new(&args(dir.path(), TaskKind::Refcoco)).unwrap();
    let ds = Arc::new(task.load(Split::Train, 1).unwrap());
    let plan = TrainPlan::new(ds.len(), 3, 2, 2, 1, 1);
    let ids_of = |workers: usize| -> Vec<(usize, usize, Vec<String>)> {
        let loader = Loader::new(Arc::clone(&ds), plan.jobs(1), workers, false);
        loader
            .map(|mb| {
                let mb = mb.unwrap();
                (mb.update, mb.micro, mb.batch.map(|b| b.ids).unwrap_or_default())
            })
            .collect()
    };
    let inline = ids_of(0);
    assert_eq!(inline.len(), plan.num_updates() * 2);
    assert_eq!(ids_of(3), inline);
    let want: Vec<(usize, usize)> = (0..plan.num_updates()).flat_map(|u| [(u, 0), (u, 1)]).collect();
    assert_eq!(inline.iter().map(|(u, m, _)| (*u, *m)).collect::<Vec<_>>(), want);

    let valid = Arc::new(task.load(Split::Valid, 1).unwrap());
    let rows = valid.len();
    let plan = ValidPlan::new(rows, 4, 0, 1);
    let mut loader = Loader::new(valid, plan.jobs(), 1, false);
    let n: usize = loader.by_ref().map(|mb| mb.unwrap().batch.map_or(0, |b| b.nsentences as usize)).sum();
    assert_eq!(n, rows);
    assert!(loader.wait_time() > std::time::Duration::ZERO);
}

/// Writes a copy of a synthetic refcoco train file with one broken row per kind.
fn broken_rows(dir: &Path) -> Vec<(usize, &'static str)> {
    let path = dir.join("train.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let cols = |l: &str| l.split('\t').map(str::to_string).collect::<Vec<_>>();
    let mut edit = |i: usize, f: &dyn Fn(&mut Vec<String>)| {
        let mut c = cols(&lines[i]);
        f(&mut c);
        lines[i] = c.join("\t");
    };
    edit(1, &|c| {
        c.pop();
    });
    edit(3, &|c| c[4] = "not*base64!".into());
    edit(5, &|c| c[4] = "aGVsbG8gd29ybGQ=".into());
    edit(7, &|c| c[3] = "1,2,three,4".into());
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    vec![(1, "line"), (3, "column 4 (image)"), (5, "column 4 (image)"), (7, "column 3 (region-coord)")]
}

#[test]
fn each_kind_of_bad_row_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    make(SynthTask::Refcoco, dir.path(), 6, 2);
    let broken = broken_rows(dir.path());
    let task = Task::new(&args(dir.path(), TaskKind::Refcoco)).unwrap();
    let ds = task.load(Split::Train, 1).unwrap();
    let messages = ["expected 5 tab-separated columns", "invalid base64", "does not decode", "not a number"];
    for ((i, field), msg) in broken.iter().zip(messages) {
        let err = ds.get(*i).unwrap_err();
        let bad = err.downcast_ref::<BadRow>().unwrap_or_else(|| panic!("row {i}: {err:#}"));
        assert_eq!(bad.line, i + 1);
        assert_eq!(bad.field, *field);
        assert!(bad.file.ends_with("train.tsv"));
        let shown = err.to_string();
        assert!(shown.contains(&format!("train.tsv:{}:", i + 1)) && shown.contains(msg), "{shown}");
    }

    // Without --skip-bad-rows the loader stops at the first; with it, the rows are skipped and counted.
    let ds = Arc::new(ds);
    let jobs = ValidPlan::new(ds.len(), 2, 0, 1).jobs();
    let first_error = Loader::new(Arc::clone(&ds), jobs.clone(), 2, false).find_map(Result::err);
    assert!(first_error.unwrap().to_string().contains("train.tsv:2:"));
    let mut loader = Loader::new(Arc::clone(&ds), jobs, 2, true);
    let loaded: i64 = loader.by_ref().map(|mb| mb.unwrap().batch.map_or(0, |b| b.nsentences)).sum();
    assert_eq!(loader.bad_rows(), 4);
    assert_eq!(loaded as usize, ds.len() - 4);
}

#[test]
fn a_changed_file_rebuilds_its_index() {
    let dir = tempfile::tempdir().unwrap();
    make(SynthTask::Caption, dir.path(), 2, 2);
    let path = dir.path().join("val.tsv");
    let task = Task::new(&args(dir.path(), TaskKind::Caption)).unwrap();
    assert!(!index_is_current(&path, None).unwrap());
    let ds = task.load(Split::Valid, 1).unwrap();
    assert_eq!(ds.len(), 2);
    assert!(dir.path().join("val.tsv.index").is_file(), "the index is cached beside the file");
    assert!(index_is_current(&path, None).unwrap());
    drop(ds);

    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap().replacen("900000", "900009", 2);
    std::fs::write(&path, format!("{text}{first}\n")).unwrap();
    assert!(!index_is_current(&path, None).unwrap(), "a changed file invalidates the index");
    let ds = task.load(Split::Valid, 1).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.get(2).unwrap().id, "900009");
    assert!(index_is_current(&path, None).unwrap());
}

#[test]
fn a_read_only_folder_puts_the_index_in_the_cache_dir() {
    let cache = tempfile::tempdir().unwrap();
    let mut a = args(&data_common::oracle_dir(), TaskKind::Caption);
    a.data = Some(data_common::oracle_dir().join("caption.tsv").to_str().unwrap().to_string());
    a.bpe_dir = Some(data_common::bpe_dir());
    a.index_cache_dir = Some(cache.path().to_path_buf());
    let task = Task::new(&a).unwrap();
    assert_eq!(task.load(Split::Valid, 1).unwrap().len(), 6);
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
}
