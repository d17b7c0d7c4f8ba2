//! `elfin-train score cider|acc` on small files, and the df converter script.

use elfin_trainer::eval::{CiderD, DocumentFrequency};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_elfin-train");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("running elfin-train")
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON line on stdout")
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

const CAPTIONS: &str = r#"{"id": 1, "prediction": "A man, riding a wave.", "references": ["a man riding a wave", "a surfer on a wave"]}
{"id": "img-2", "prediction": "a cat on a laptop", "references": ["A cat on a laptop!"]}

{"id": 3, "prediction": "two dogs", "references": ["a red bus on the street"]}
"#;

#[test]
fn scores_a_caption_file_like_the_library_does() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir.path().join("p.jsonl"), CAPTIONS);
    let out_path = dir.path().join("scores.jsonl");
    let out = run(&["score", "cider", "--predictions", &p, "--out", out_path.to_str().unwrap()]);
    let summary = stdout_json(&out);
    assert_eq!(summary["count"], 3);
    // The clean-up deletes punctuation and strips but does not lower-case,
    // so "A" and "a" stay different words.
    let samples = vec![
        ("A man riding a wave", vec!["a man riding a wave", "a surfer on a wave"]),
        ("a cat on a laptop", vec!["A cat on a laptop"]),
        ("two dogs", vec!["a red bus on the street"]),
    ];
    let refs: Vec<Vec<&str>> = samples.iter().map(|(_, r)| r.clone()).collect();
    let expected = CiderD::from_references(&refs).score_all(&samples);
    let mean = expected.iter().sum::<f64>() / 3.0;
    assert!((summary["cider"].as_f64().unwrap() - mean).abs() < 1e-12, "{summary} vs {mean}");
    assert!(mean > 1.0);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&out_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["id"], "img-2");
    assert!((lines[1]["cider"].as_f64().unwrap() - expected[1]).abs() < 1e-12);
    assert_eq!(lines[2]["cider"], 0.0);

    // Without the clean-up, "wave." and "laptop!" no longer match.
    let raw = stdout_json(&run(&["score", "cider", "--predictions", &p, "--no-normalize"]));
    assert!(raw["cider"].as_f64().unwrap() < mean - 0.1, "{raw} vs {mean}");
}

#[test]
fn cached_df_from_the_converted_pickle_equals_corpus_df() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir.path().join("p.jsonl"), CAPTIONS);
    // A pickle in the reference's layout: defaultdict(float) keyed by word
    // tuples, ref_len a numpy float, protocol 2. Its content is the df of this
    // file's normalised references, so scores must equal corpus mode.
    let pickle = dir.path().join("words.p");
    let script = r#"
import pickle, sys, numpy as np
from collections import defaultdict
refs = [["a man riding a wave", "a surfer on a wave"], ["a cat on a laptop"], ["a red bus on the street"]]
df = defaultdict(float)
for image in refs:
    grams = {tuple(r.split()[i:i + k]) for r in image for k in range(1, 5) for i in range(len(r.split()) - k + 1)}
    for g in grams:
        df[g] += 1
with open(sys.argv[1], "wb") as f:
    pickle.dump({"document_frequency": df, "ref_len": np.float64(len(refs))}, f, protocol=2)
"#;
    let made = Command::new("/opt/elfin/venv/bin/python").args(["-c", script, pickle.to_str().unwrap()]).status();
    assert!(made.unwrap().success());
    let json = dir.path().join("words.json");
    let converter = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/convert_cider_df.py");
    let conv = Command::new("/opt/elfin/venv/bin/python")
        .args([converter, pickle.to_str().unwrap(), json.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(conv.status.success(), "{}", String::from_utf8_lossy(&conv.stderr));
    let df = DocumentFrequency::load(&json).unwrap();
    assert_eq!(df.ref_len, 3.0);
    assert_eq!(df.get("a"), 3.0);
    assert_eq!(df.get("on a wave"), 1.0);
    assert_eq!(df.get("a man riding a"), 1.0);

    let cached = stdout_json(&run(&["score", "cider", "--predictions", &p, "--df", json.to_str().unwrap()]));
    let corpus = stdout_json(&run(&["score", "cider", "--predictions", &p]));
    assert_eq!(cached["cider"], corpus["cider"]);

    // A pickle that is not a df dict is refused with the file named.
    let bad = dir.path().join("bad.p");
    let made = Command::new("/opt/elfin/venv/bin/python")
        .args(["-c", "import pickle,sys; pickle.dump({'ref_len': 3}, open(sys.argv[1], 'wb'))", bad.to_str().unwrap()])
        .status();
    assert!(made.unwrap().success());
    let conv = Command::new("/opt/elfin/venv/bin/python")
        .args([converter, bad.to_str().unwrap(), json.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!conv.status.success());
    assert!(String::from_utf8_lossy(&conv.stderr).contains("bad.p"));
}

#[test]
fn malformed_lines_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("{\"id\": 1, \"prediction\": \"a\", \"references\": [\"a\"]}\n{\"id\": 2, \"prediction\": \"a\"", "p.jsonl:2"),
        ("\n{\"id\": 1, \"prediction\": \"a\"}\n", "p.jsonl:2: a caption record needs"),
        ("{\"id\": 1, \"prediction\": \"a\", \"references\": []}\n", "p.jsonl:1: \"references\" is empty"),
        ("{\"prediction\": \"a\", \"references\": [\"a\"]}\n", "missing field `id`"),
        ("", "no predictions"),
    ] {
        let p = write(&dir.path().join("p.jsonl"), text);
        let out = run(&["score", "cider", "--predictions", &p]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{text:?}: {stderr}");
    }
    let out = run(&["score", "cider", "--predictions", "/nonexistent/p.jsonl"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/p.jsonl"));
}

#[test]
fn scores_boxes_with_acc_at_half() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir.path().join("b.jsonl"),
        r#"{"id": "a", "box": [0, 0, 10, 10], "ref_box": [0, 0, 10, 10]}
{"id": "b", "box": [0, 0, 10, 10], "ref_box": [10, 0, 20, 10]}
{"id": "c", "box": [0, 0, 10, 5], "ref_box": [0, 0, 10, 10]}
{"id": "d", "box": [0, 0, 10, 4], "ref_box": [0, 0, 10, 10]}
"#,
    );
    let summary = stdout_json(&run(&["score", "acc", "--predictions", &p]));
    assert_eq!(summary["count"], 4);
    assert_eq!(summary["score"], 0.5);
}
