//! The CPU demo evaluation presets through `elfin launch`: 2 ranks give the
//! same metrics and the same gathered predictions as 1 rank, in the
//! reference's result format.

mod train_common;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use train_common::launcher;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Runs a demo evaluation of the untrained model (seed 7) in `cwd`; returns
/// (SPLIT_metrics.json, SPLIT_predict.json).
fn evaluate(preset: &str, ranks: usize, data_root: &Path, cwd: &Path) -> (Value, Value) {
    std::fs::create_dir_all(cwd).unwrap();
    let out = Command::new(launcher())
        .args(["launch", "--preset", preset, "--cpu", "--nproc-per-node", &ranks.to_string(), "--data-root"])
        .arg(data_root)
        .args(["--set", "checkpoint="])
        .current_dir(cwd)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{preset} on {ranks}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" eval "), "the ranks run `elfin-train eval`: {stdout}");
    let task = preset.trim_start_matches("demo_").trim_end_matches("_eval");
    let dir = cwd.join("demo_results").join(task);
    (read_json(&dir.join("valid_metrics.json")), read_json(&dir.join("valid_predict.json")))
}

#[test]
fn two_ranks_evaluate_like_one() {
    let root = tempfile::tempdir().unwrap();
    for (preset, metrics, keys) in [
        ("demo_caption_eval", &["cider"][..], ["image_id", "caption"]),
        ("demo_refcoco_eval", &["score"][..], ["uniq_id", "box"]),
    ] {
        let (m1, p1) = evaluate(preset, 1, root.path(), &root.path().join(format!("{preset}-1")));
        let (m2, p2) = evaluate(preset, 2, root.path(), &root.path().join(format!("{preset}-2")));
        let rows = p1.as_array().unwrap();
        assert_eq!(rows.len(), m1["nsentences"].as_f64().unwrap() as usize, "{preset}: one result per sample");
        for row in rows {
            let mut got: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
            got.sort();
            let mut want = keys.to_vec();
            want.sort();
            assert_eq!(got, want, "{preset}: the reference's result record");
        }
        assert_eq!(p1, p2, "{preset}: the gathered predictions");
        for m in metrics {
            assert!(m1[m].is_number() && m1[m] == m2[m], "{preset} {m}: {} vs {}", m1[m], m2[m]);
        }
        let loss = (m1["loss"].as_f64().unwrap() - m2["loss"].as_f64().unwrap()).abs();
        assert!(loss < 1e-9, "{preset}: loss differs by {loss}");
        if preset == "demo_caption_eval" {
            assert_eq!(m1["coco"], m2["coco"], "COCO metrics");
            assert_eq!(m1["coco"]["count"], rows.len());
            for k in ["Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"] {
                assert!(m1["coco"][k].is_number(), "{k}: {}", m1["coco"]);
            }
        }
    }
}
