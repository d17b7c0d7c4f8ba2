//! CIDEr-D: hand-computed cases, the cached-df path, and a cross-check against
//! an independent Python implementation (eval_fixtures/ciderd_independent.py).

use elfin_trainer::eval::text_norm::normalize_caption;
use elfin_trainer::eval::{round_like_python, CiderD, DocumentFrequency, ScoreSum};
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

fn df(ref_len: f64, counts: &[(&str, f64)]) -> DocumentFrequency {
    DocumentFrequency {
        ref_len,
        document_frequency: counts.iter().map(|(k, v)| (k.to_string(), *v)).collect::<HashMap<_, _>>(),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

#[test]
fn identical_two_word_caption_scores_five_in_corpus_mode() {
    // Two images, refs "a b" and "c d"; ref_len = 2, every n-gram has df 1,
    // so every weight is ln 2 − ln 1 = ln 2 =: u.
    // Image 1, hyp "a b": order 1: (u·u + u·u) / (√2u · √2u) = 1; order 2:
    // u·u / (u · u) = 1; orders 3, 4: empty → 0. Both have 1 bigram → penalty 1.
    // score = 10 · (1 + 1 + 0 + 0)/4 / 1 = 5.
    let refs = vec![vec!["a b"], vec!["c d"]];
    let scorer = CiderD::from_references(&refs);
    assert!(close(scorer.score("a b", &refs[0]), 5.0));
    assert!(close(scorer.score("c d", &refs[1]), 5.0));
    // A hypothesis sharing nothing scores 0.
    assert_eq!(scorer.score("c d", &refs[0]), 0.0);
}

#[test]
fn clipping_idf_and_bigram_length_penalty_by_hand() {
    // ref_len 4 → ln 4 = 2u with u = ln 2. df: a 2 → idf u; b 1 → 2u;
    // "a b" 4 → 0; "a a", "a a b" absent → 2u.
    // hyp "a a b": a tf 2 → 2u, b → 2u; "a a" → 2u, "a b" → 0; "a a b" → 2u.
    // ref "a b":   a → u, b → 2u; "a b" → 0.
    // order 1: num = min(2u,u)·u + min(2u,2u)·2u = 5u² (clipping: without the
    //          min it would be 6u²); norms √8 u and √5 u → 5/(2√10).
    // order 2: the reference's bigram vector is all zero → norm 0 → no
    //          division, numerator 0 → 0. Orders 3, 4: 0.
    // lengths (bigram counts) 2 and 1 → δ = 1 → penalty e^(−1/72).
    // score = 10 · (5/(2√10))/4 · e^(−1/72) ≈ 1.94916.
    let scorer = CiderD::new(df(4.0, &[("a", 2.0), ("b", 1.0), ("a b", 4.0)]));
    let expected = 10.0 * (5.0 / (2.0 * 10f64.sqrt())) / 4.0 * (-1.0f64 / 72.0).exp();
    let got = scorer.score("a a b", &["a b"]);
    assert!(close(got, expected), "{got} vs {expected}");
    assert!((got - 1.94916).abs() < 1e-5);
}

#[test]
fn mean_over_references_and_word_count_is_not_the_length() {
    // Same df as above; hyp "b" has 0 bigrams. Reference "b": order 1 cosine 1,
    // δ = 0 → 10 · 1/4 = 2.5. Reference "a b c" ("c" absent → idf 2u): hyp b → 2u;
    // ref a u, b 2u, c 2u: num (2u)(2u) = 4u², norms 2u and 3u → 2/3; the ref
    // has 3 words but 2 bigrams, so δ = 0 − 2 → e^(−4/72).
    // Total = 10 · (1/4 + (2/3)/4 · e^(−4/72)) / 2.
    let scorer = CiderD::new(df(4.0, &[("a", 2.0), ("b", 1.0), ("a b", 4.0)]));
    let expected = 10.0 * (0.25 + (2.0 / 3.0) / 4.0 * (-4.0f64 / 72.0).exp()) / 2.0;
    let got = scorer.score("b", &["b", "a b c"]);
    assert!(close(got, expected), "{got} vs {expected}");
}

#[test]
fn cached_df_saved_from_the_corpus_gives_the_corpus_scores() {
    let samples = coco_like_samples();
    let refs: Vec<Vec<String>> = samples.iter().map(|(_, r)| r.clone()).collect();
    let corpus = CiderD::from_references(&refs);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("df.json");
    corpus.document_frequency().save(&path).unwrap();
    let cached = CiderD::new(DocumentFrequency::load(&path).unwrap());
    assert_eq!(corpus.score_all(&samples), cached.score_all(&samples));
    // The df counts images, not sentences: "a" is in every reference set.
    assert_eq!(corpus.document_frequency().get("a"), samples.len() as f64);
    assert_eq!(corpus.document_frequency().ref_len, samples.len() as f64);
    // Scoring a subset with the fixed df equals scoring it within the whole set
    // (why the reference's per-batch scoring is whole-set scoring).
    assert_eq!(cached.score_all(&samples[..2]), corpus.score_all(&samples)[..2].to_vec());
}

#[test]
fn malformed_df_files_are_rejected_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        (r#"{"ref_len": 0, "document_frequency": {}}"#, "ref_len"),
        (r#"{"ref_len": 3, "document_frequency": {"a  b": 1}}"#, "single spaces"),
        (r#"{"ref_len": 3, "document_frequency": {"a": -1}}"#, "≥ 0"),
        (r#"{"reflen": 3}"#, "convert_cider_df.py"),
    ] {
        let path = dir.path().join("bad.json");
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", DocumentFrequency::load(&path).unwrap_err());
        assert!(err.contains("bad.json") && err.contains(needle), "{err}");
    }
}

#[test]
fn matches_an_independent_python_implementation() {
    let samples = coco_like_samples();
    let refs: Vec<Vec<String>> = samples.iter().map(|(_, r)| r.clone()).collect();
    let corpus = CiderD::from_references(&refs).score_all(&samples);
    let python = python_cider(&samples, None);
    assert_eq!(python.len(), corpus.len());
    for (r, p) in corpus.iter().zip(&python) {
        assert!(close(*r, *p), "corpus mode: rust {r} vs python {p}");
    }
    let fixed = df(40504.0, &[("a", 30000.0), ("man", 9000.0), ("a man", 8000.0), ("on", 15000.0), ("of", 12000.0)]);
    let rust = CiderD::new(fixed.clone()).score_all(&samples);
    let python = python_cider(&samples, Some(&fixed));
    for (r, p) in rust.iter().zip(&python) {
        assert!(close(*r, *p), "cached df: rust {r} vs python {p}");
    }
    assert!(rust.iter().any(|s| *s > 1.0) && rust.iter().any(|s| *s < 0.5), "{rust:?}");
}

#[test]
fn validation_aggregate_and_rounding_follow_python() {
    let mut total = ScoreSum::default();
    for s in [1.2, 1.5, 1.8] {
        total.add(s);
    }
    let mut other = ScoreSum::default();
    other.add(0.5);
    total.merge(other);
    assert_eq!(ScoreSum::from_array(total.to_array()), total);
    assert!(close(total.mean().unwrap(), 5.0 / 4.0));
    assert_eq!(ScoreSum::default().mean(), None);
    // Python: round(0.125, 2) = 0.12, round(2.675, 2) = 2.67 (binary value below), round(1.4035, 3) = 1.403.
    assert_eq!(round_like_python(0.125, 2), 0.12);
    assert_eq!(round_like_python(2.675, 2), 2.67);
    assert_eq!(round_like_python(1.40349, 3), 1.403);
    assert_eq!(round_like_python(0.90125, 4), 0.9012);
}

/// The public COCO val2014 image 391895 (its five references, the usual
/// coco-caption example) and captions in the style of COCO written for this
/// test, normalised as the reference does before scoring.
fn coco_like_samples() -> Vec<(String, Vec<String>)> {
    let raw: &[(&str, &[&str])] = &[
        (
            "a man riding a motorcycle on a dirt road",
            &[
                "A man with a red helmet on a small moped on a dirt road. ",
                "Man riding a motor bike on a dirt road on the countryside.",
                "A man riding on the back of a motorcycle.",
                "A dirt path with a young person on a motor bike rests to the foreground of a verdant area with a bridge and a background of cloud-wreathed mountains. ",
                "A man in a red shirt and a red hat is on a motorcycle on a hill side.",
            ],
        ),
        (
            "a man riding a wave on top of a surfboard.",
            &[
                "A man riding a wave on a surfboard.",
                "a surfer rides a large wave in the ocean",
                "A person on a surfboard riding a wave!",
            ],
        ),
        (
            "a plate of food with broccoli and meat",
            &["A plate with meat, broccoli and rice.", "a white plate topped with food and vegetables"],
        ),
        ("a cat sitting on a laptop", &["a cat lies on the keyboard of a laptop", "A cat is sleeping on a computer."]),
        ("a red bus driving down a street", &["a double decker bus on a city street", "A red bus is parked."]),
        ("two dogs playing in the grass", &["a man throws a frisbee in a park"]),
    ];
    raw.iter().map(|(h, rs)| (normalize_caption(h), rs.iter().map(|r| normalize_caption(r)).collect())).collect()
}

fn python_cider(samples: &[(String, Vec<String>)], df: Option<&DocumentFrequency>) -> Vec<f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/eval_fixtures/ciderd_independent.py");
    let request = serde_json::json!({"samples": samples, "df": df});
    let mut child = Command::new("/opt/elfin/venv/bin/python")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running /opt/elfin/venv/bin/python (run scripts/setup.sh)");
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python failed");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    reply["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}
