//! The training loop end to end on a tiny model: resume, update-freq
//! equivalence, ranks × update-freq equivalence, and metrics.jsonl.

mod train_common;

use std::process::Command;
use train_common::*;

#[test]
fn a_stopped_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let (straight, resumed) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    // Dropout and drop path on: the per-update reseeding must make them repeat.
    let noisy = ["--dropout=0.1", "--encoder-drop-path-rate=0.1", "--decoder-drop-path-rate=0.1"];
    run_trainer(&train_args(&data, &straight, &[&noisy[..], &["--max-update=6"]].concat()));
    run_trainer(&train_args(&data, &resumed, &[&noisy[..], &["--max-update=3"]].concat()));
    let second = run_trainer(&train_args(&data, &resumed, &[&noisy[..], &["--max-update=6"]].concat()));
    let log = String::from_utf8_lossy(&second.stdout);
    assert!(log.contains("resuming from"), "the second launch must say it resumes:\n{log}");

    let (a, b) = (
        model_tensors(&straight.join("checkpoint_last.safetensors")),
        model_tensors(&resumed.join("checkpoint_last.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    for (name, x) in &a {
        assert!(x.iter().zip(&b[name]).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after resuming");
    }
    let losses =
        |dir: &std::path::Path| train_records(dir).iter().map(|r| r["loss"].as_f64().unwrap()).collect::<Vec<_>>();
    assert_eq!(losses(&straight), losses(&resumed), "the per-update losses must repeat exactly");
}

#[test]
fn update_freq_two_equals_one_batch_twice_the_size() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let (accumulated, single) = (tmp.path().join("uf2"), tmp.path().join("bs8"));
    // Frozen BatchNorm: batch statistics would differ between 4 and 8 rows.
    run_trainer(&train_args(
        &data,
        &accumulated,
        &["--batch-size=4", "--update-freq=2", "--max-update=3", "--freeze-resnet"],
    ));
    run_trainer(&train_args(
        &data,
        &single,
        &["--batch-size=8", "--update-freq=1", "--max-update=3", "--freeze-resnet"],
    ));
    assert_same_training(&accumulated, &single);
}

#[test]
fn two_ranks_train_the_same_model_as_one_rank_with_update_freq_two() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let (two_ranks, one_rank) = (tmp.path().join("np2"), tmp.path().join("np1"));
    run_trainer(&train_args(
        &data,
        &one_rank,
        &["--batch-size=4", "--update-freq=2", "--max-update=3", "--freeze-resnet"],
    ));
    let out = Command::new("mpirun")
        .args(["-np", "2", "--oversubscribe", "-x", "OMP_NUM_THREADS=1", TRAINER])
        .args(train_args(
            &data,
            &two_ranks,
            &["--batch-size=4", "--update-freq=1", "--max-update=3", "--freeze-resnet"],
        ))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_same_training(&two_ranks, &one_rank);
}

/// The 2-rank case is bit-identical (trainer/tests/preemption.rs); on 3
/// ranks the sums run in another order, so the same up to float rounding.
#[test]
fn three_ranks_with_a_sharded_optimiser_train_as_three_ranks_without() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let (sharded, plain) = (tmp.path().join("os"), tmp.path().join("none"));
    for (dir, flag) in [(&sharded, "--zero-sharding=os"), (&plain, "--zero-sharding=none")] {
        let out = Command::new("mpirun")
            .args(["-np", "3", "--oversubscribe", "-x", "OMP_NUM_THREADS=1", TRAINER])
            .args(train_args(&data, dir, &["--batch-size=4", "--max-update=3", "--freeze-resnet", flag]))
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .output()
            .unwrap();
        let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        assert_eq!(text.contains("optimiser sharded over 3 ranks"), dir == &sharded, "{text}");
    }
    assert_same_training(&sharded, &plain);
}

/// Same samples per update, same losses and gradient norms, same weights up to float rounding.
fn assert_same_training(a: &std::path::Path, b: &std::path::Path) {
    let (ra, rb) = (train_records(a), train_records(b));
    assert_eq!(ra.len(), 3);
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x["ntokens"], y["ntokens"], "the same samples form each update");
        for key in ["loss", "nll_loss", "gnorm"] {
            let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!((p - q).abs() <= 1e-4 * p.abs().max(1.0), "{key}: {p} vs {q}");
        }
    }
    let diff = max_param_diff(&a.join("checkpoint_last.safetensors"), &b.join("checkpoint_last.safetensors"));
    assert!(diff < 1e-4, "parameters differ by {diff}");
}

#[test]
fn metrics_jsonl_has_train_and_valid_records_with_the_reference_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let save = tmp.path().join("run");
    run_trainer(&train_args(
        &data,
        &save,
        &[
            "--max-update=2",
            "--eval-cider",
            r#"--eval-args={"beam":2,"max_len_b":5}"#,
            "--best-checkpoint-metric=cider",
            "--maximize-best-checkpoint-metric",
        ],
    ));
    let text = std::fs::read_to_string(save.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let train = records.iter().find(|r| r["kind"] == "train").expect("a train record");
    for field in
        ["loss", "nll_loss", "ppl", "wps", "ups", "wpb", "bsz", "num_updates", "lr", "gnorm", "clip", "train_wall"]
    {
        assert!(train.get(field).is_some(), "train record lacks {field}: {train}");
    }
    let valid = records.iter().find(|r| r["kind"] == "valid").expect("a valid record");
    assert_eq!(valid["num_updates"], 2);
    assert!(valid["cider"].as_f64().is_some(), "{valid}");
    for name in ["checkpoint_last.safetensors", "checkpoint_best.safetensors", "predictions.jsonl"] {
        assert!(save.join(name).exists(), "{name} missing");
    }
    let predictions = std::fs::read_to_string(save.join("predictions.jsonl")).unwrap();
    assert_eq!(predictions.lines().count(), 8, "one prediction per validation image");
}

#[test]
fn predict_captions_an_image_file_with_a_trained_checkpoint() {
    use base64::Engine;
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let save = tmp.path().join("run");
    run_trainer(&train_args(&data, &save, &["--max-update=2", r#"--eval-args={"beam":2,"max_len_b":5}"#]));
    // The first validation image, as a file.
    let val = std::fs::read_to_string(data.join("val.tsv")).unwrap();
    let b64 = val.lines().next().unwrap().split('\t').nth(4).unwrap();
    let image = tmp.path().join("image.png");
    std::fs::write(&image, base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
    let checkpoint = save.join("checkpoint_last.safetensors");

    let out = Command::new(TRAINER)
        .args(["predict", "--checkpoint"])
        .arg(&checkpoint)
        .arg("--image")
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "one caption line");

    let wrong = Command::new(TRAINER)
        .args(["predict", "--text", "the red circle", "--checkpoint"])
        .arg(&checkpoint)
        .arg("--image")
        .arg(&image)
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("captioning"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

fn mpirun_trainer(args: &[String]) -> std::process::Output {
    let out = Command::new("mpirun")
        .args(["-np", "2", "--oversubscribe", "-x", "OMP_NUM_THREADS=1", TRAINER])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// One checkpoint, one score: validation during a 2-rank run, and `elfin-train
/// eval` of the checkpoint it saved on 1 and 2 ranks and with another
/// validation batch size, give the same CIDEr and the same predictions, and
/// validation losses equal up to float rounding.
#[test]
fn a_checkpoint_scores_the_same_in_training_and_in_eval_on_any_ranks_and_batch_size() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let save = tmp.path().join("run");
    let eval = ["--eval-cider", r#"--eval-args={"beam":3,"max_len_b":6}"#, "--batch-size=3"];
    // Two ranks: after the last update each rank's BatchNorm statistics are its own,
    // and the checkpoint holds rank 0's; validation must score the checkpoint's.
    mpirun_trainer(&train_args(&data, &save, &[&eval[..], &["--max-update=4"]].concat()));
    let metrics = std::fs::read_to_string(save.join("metrics.jsonl")).unwrap();
    let in_training: serde_json::Value = metrics
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "valid")
        .expect("a validation at the last update");
    let checkpoint = format!("--checkpoint={}", save.join("checkpoint_last.safetensors").display());
    let eval_args = |out: &str, extra: &[&str]| {
        let mut a = train_args(&data, &save, &[&eval[..], extra].concat());
        a[0] = "eval".into();
        a.push(checkpoint.clone());
        a.push(format!("--out={}", tmp.path().join(out).display()));
        a
    };
    let scores = |out: &[u8]| -> serde_json::Value {
        serde_json::from_str(String::from_utf8_lossy(out).lines().last().expect("a scores line")).unwrap()
    };
    let one = scores(&run_trainer(&eval_args("one.jsonl", &[])).stdout);
    let two = scores(&mpirun_trainer(&eval_args("two.jsonl", &[])).stdout);
    let batch4 = scores(&run_trainer(&eval_args("batch4.jsonl", &["--batch-size-valid=4"])).stdout);
    assert!(one["cider"].is_number(), "{one}");
    assert_eq!(one["nsentences"], 8.0);
    for (name, s) in [("in training", &in_training), ("2 ranks", &two), ("batch size 4", &batch4)] {
        assert_eq!(s["cider"], one["cider"], "CIDEr {name} vs eval on 1 rank");
        assert_eq!(s["nsentences"], one["nsentences"], "{name}");
        let (a, b) = (s["loss"].as_f64().unwrap(), one["loss"].as_f64().unwrap());
        // The same batches on any number of ranks: only the order of the sums differs.
        let tolerance = if name == "batch size 4" { 1e-5 } else { 1e-9 };
        assert!((a - b).abs() <= tolerance * b.abs(), "validation loss {name}: {a} vs eval on 1 rank: {b}");
    }
    // The same predictions, in the validation set's order.
    let preds = |f: &str| {
        std::fs::read_to_string(tmp.path().join(f))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("image");
                v
            })
            .collect::<Vec<_>>()
    };
    let during = preds("run/predictions.jsonl");
    assert_eq!(preds("one.jsonl"), preds("two.jsonl"));
    assert_eq!(preds("one.jsonl"), preds("batch4.jsonl"));
    assert_eq!(preds("one.jsonl"), during);
}

#[test]
fn a_pt_restore_file_uses_its_converted_twin_or_says_how_to_convert_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let pretrained = tmp.path().join("pretrained");
    run_trainer(&train_args(&data, &pretrained, &["--max-update=1"]));
    let pt = tmp.path().join("ofa_micro.pt");
    std::fs::write(&pt, b"not read: a pickle").unwrap();
    let restore = format!("--restore-file={}", pt.display());

    let out = Command::new(TRAINER)
        .args(train_args(&data, &tmp.path().join("a"), &["--max-update=1", &restore]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("convert_ofa_checkpoint.py") && stderr.contains("ofa_micro.pt"), "{stderr}");

    std::fs::copy(pretrained.join("checkpoint_last.safetensors"), tmp.path().join("ofa_micro.safetensors")).unwrap();
    let out = run_trainer(&train_args(&data, &tmp.path().join("b"), &["--max-update=1", &restore]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("restoring from"));
}

#[test]
fn bf16_on_the_cpu_trains_close_to_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth_caption(tmp.path());
    let (fp32, bf16) = (tmp.path().join("fp32"), tmp.path().join("bf16"));
    run_trainer(&train_args(&data, &fp32, &["--max-update=3"]));
    let out = run_trainer(&train_args(&data, &bf16, &["--max-update=3", "--bf16"]));
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(log.contains("on Cpu (Bf16)"), "the run should say it trains in bf16 on the CPU:\n{log}");
    let losses = |dir: &std::path::Path| -> Vec<f64> {
        train_records(dir).iter().map(|r| r["loss"].as_f64().expect("a loss")).collect()
    };
    let (a, b) = (losses(&fp32), losses(&bf16));
    assert_eq!(a.len(), 3);
    // bf16 matrix products round differently (so autocast is on), but only a little.
    assert_ne!(a[0], b[0], "the first loss is fp32's: autocast did not act");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 0.03 * x.abs(), "fp32 losses {a:?}, bf16 losses {b:?}");
    }
}
