//! `elfin-train score coco` against pycocoevalcap itself (its PTB tokenizer
//! through the Stanford jar on Java, then its Bleu, Rouge and Cider) on a few
//! hundred generated caption sets with mixed case, punctuation, quotes,
//! brackets, contractions, numbers and empty predictions; and
//! `scripts/coco_caption_eval.py`, the METEOR/SPICE path.

use elfin_trainer::eval::coco::{score_captions, tokenize_captions, CaptionSet};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_elfin-train");
const PYTHON: &str = "/opt/elfin/venv/bin/python";
const TOL: f64 = 1e-9;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const WORDS: &[&str] = &[
    "a",
    "man",
    "dog",
    "cat",
    "riding",
    "wave",
    "on",
    "top",
    "of",
    "the",
    "surfboard",
    "two",
    "people",
    "standing",
    "near",
    "red",
    "bus",
    "street",
    "t-shirt",
    "black",
    "white",
    "is",
    "sitting",
    "bench",
    "with",
    "and",
    "in",
    "an",
    "old",
    "city",
    "pizza",
    "table",
    "kids",
    "playing",
    "frisbee",
    "green",
    "field",
    "giraffe",
    "tall",
    "tree",
];
const SPECIAL: &[&str] = &[
    "don't",
    "it's",
    "dog's",
    "they're",
    "we've",
    "I'm",
    "they'll",
    "he'd",
    "can't",
    "won't",
    "cannot",
    "gonna",
    "3.5",
    "1,000",
    "10:30",
    "50%",
    "$5",
    "Mr.",
    "St.",
    "etc.",
    "U.S.",
    "-",
    "--",
    "&",
    "well-known",
    "x-ray",
];
const TRAILING: &[&str] = &[",", ";", ":", "!", "?", "...", "!!", "?!", "!!!"];

/// One word with its case, wrapping and trailing punctuation.
fn word(rng: &mut Rng, base: &str) -> String {
    let plain = WORDS.contains(&base);
    let mut w = base.to_string();
    if plain && rng.chance(0.2) {
        w = w[..1].to_uppercase() + &w[1..];
    } else if plain && rng.chance(0.05) {
        w = w.to_uppercase();
    }
    if plain {
        match rng.below(40) {
            0 | 1 => w = format!("\"{w}\""),
            2 => w = format!("'{w}'"),
            3 => w = format!("({w})"),
            4 => w = format!("[{w}]"),
            5 => w = format!("{{{w}}}"),
            _ => {}
        }
        if rng.chance(0.12) {
            w.push_str(rng.pick(TRAILING));
        }
        if rng.chance(0.03) {
            w.push('.');
        }
    }
    w
}

/// A caption, often a perturbation of `like` so that higher n-grams match.
fn caption(rng: &mut Rng, like: Option<&[&str]>) -> String {
    let base: Vec<&str> = match like {
        Some(words) if rng.chance(0.7) => {
            words.iter().map(|&w| if rng.chance(0.25) { rng.pick(WORDS) } else { w }).collect()
        }
        _ => {
            (0..1 + rng.below(12)).map(|_| if rng.chance(0.12) { rng.pick(SPECIAL) } else { rng.pick(WORDS) }).collect()
        }
    };
    let mut out = String::new();
    for (i, b) in base.iter().enumerate() {
        if i > 0 {
            out.push_str(match rng.below(30) {
                0 => "  ",
                1 => "\t",
                2 => "\n",
                _ => " ",
            });
        }
        out.push_str(&word(rng, b));
    }
    if rng.chance(0.5) && !base.last().is_some_and(|w| SPECIAL.contains(w)) {
        out.push('.');
    }
    out
}

fn words_of(caption: &str) -> Vec<&'static str> {
    caption.split_whitespace().filter_map(|w| WORDS.iter().copied().find(|x| x.eq_ignore_ascii_case(w))).collect()
}

/// Sets of images (prediction, references); about one prediction in ten is
/// empty or punctuation only.
fn generate_sets(rng: &mut Rng, count: usize) -> Vec<Vec<(String, Vec<String>)>> {
    (0..count)
        .map(|_| {
            (0..1 + rng.below(6))
                .map(|_| {
                    let first = caption(rng, None);
                    let words = words_of(&first);
                    let mut refs = vec![first];
                    for _ in 0..rng.below(5) {
                        refs.push(caption(rng, Some(&words)));
                    }
                    let prediction = match rng.below(20) {
                        0 => String::new(),
                        1 => rng.pick(&["...", ". ,", "!", "--", " "]).to_string(),
                        _ => caption(rng, Some(&words)),
                    };
                    (prediction, refs)
                })
                .collect()
        })
        .collect()
}

/// The set as the reference's two files: predictions and COCO-format references.
fn write_files(dir: &Path, images: &[(String, Vec<String>)]) -> (String, String) {
    let mut annotations = Vec::new();
    for (i, (_, refs)) in images.iter().enumerate() {
        for r in refs {
            annotations.push(json!({"image_id": i.to_string(), "id": annotations.len(), "caption": r}));
        }
    }
    let refs = json!({
        "images": (0..images.len()).map(|i| json!({"id": i.to_string()})).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    // Predictions in another order than the images: the image order decides.
    let preds: Vec<Value> =
        images.iter().enumerate().rev().map(|(i, (p, _))| json!({"image_id": i.to_string(), "caption": p})).collect();
    let (p, r) = (dir.join("predict.json"), dir.join("coco_format.json"));
    std::fs::write(&p, serde_json::to_string(&preds).unwrap()).unwrap();
    std::fs::write(&r, serde_json::to_string(&refs).unwrap()).unwrap();
    (p.to_str().unwrap().to_string(), r.to_str().unwrap().to_string())
}

fn stdout_json(out: &Output) -> Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn score_coco(p: &str, r: &str) -> Value {
    stdout_json(&Command::new(BIN).args(["score", "coco", "--predictions", p, "--references", r]).output().unwrap())
}

const METRICS: [&str; 6] = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"];

#[test]
fn rust_scores_equal_pycocoevalcap_on_generated_sets() {
    let mut rng = Rng(0x5eed_c0c0);
    let sets = generate_sets(&mut rng, 250);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sets.json");
    let as_json: Vec<Vec<Value>> = sets
        .iter()
        .map(|images| images.iter().map(|(p, r)| json!({"prediction": p, "references": r})).collect())
        .collect();
    std::fs::write(&input, serde_json::to_string(&as_json).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/eval_fixtures/pycocoevalcap_sets.py");
    let want = stdout_json(&Command::new(PYTHON).arg(script).arg(&input).output().unwrap());
    let want = want.as_array().unwrap();
    assert_eq!(want.len(), sets.len());

    let (mut empty, mut nonzero_bleu4) = (0, 0);
    for (s, (images, want)) in sets.iter().zip(want).enumerate() {
        // The tokenizer first: a mismatch names the caption.
        let predictions: Vec<&str> = images.iter().map(|(p, _)| p.as_str()).collect();
        let references: Vec<&str> = images.iter().flat_map(|(_, r)| r.iter().map(String::as_str)).collect();
        let want_refs: Vec<&str> = want["reference_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .map(|t| t.as_str().unwrap())
            .collect();
        let want_preds: Vec<&str> = want["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        for (captions, want) in [(&predictions, &want_preds), (&references, &want_refs)] {
            for (i, (got, want)) in tokenize_captions(captions).into_iter().zip(want.iter()).enumerate() {
                assert_eq!(got, *want, "set {s}: caption {:?} (before {:?})", captions[i], captions.get(i + 1));
                empty += usize::from(got.is_empty() && captions == &predictions);
            }
        }
        // In process (a process per set would cost a libtorch load each); the
        // command line is checked on the larger set below.
        let set_dir = dir.path().join(s.to_string());
        std::fs::create_dir(&set_dir).unwrap();
        let (p, r) = write_files(&set_dir, images);
        let set = CaptionSet::load(Path::new(&p), Path::new(&r)).unwrap();
        let got = serde_json::to_value(score_captions(&set)).unwrap();
        assert_eq!(got["count"], images.len());
        for m in METRICS {
            let (g, w) = (got[m].as_f64().unwrap(), want[m].as_f64().unwrap());
            assert!((g - w).abs() <= TOL, "set {s}: {m} rust {g} vs pycocoevalcap {w}");
        }
        nonzero_bleu4 += usize::from(want["Bleu_4"].as_f64().unwrap() > 0.01);
    }
    // The sets exercise what they claim to.
    assert!(empty >= 20, "only {empty} empty predictions");
    assert!(nonzero_bleu4 >= 50, "only {nonzero_bleu4} sets with a real BLEU-4");
}

#[test]
fn the_pycocoevalcap_script_scores_like_coco_eval() {
    let mut rng = Rng(77);
    let images: Vec<(String, Vec<String>)> = generate_sets(&mut rng, 12).into_iter().flatten().collect();
    let dir = tempfile::tempdir().unwrap();
    let (p, r) = write_files(dir.path(), &images);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/coco_caption_eval.py");
    let out =
        Command::new(PYTHON).args([script, &p, &r, "--metrics", "Bleu,ROUGE_L,CIDEr,METEOR,SPICE"]).output().unwrap();
    let want = stdout_json(&out);
    let got = score_coco(&p, &r);
    assert_eq!(want["count"], got["count"]);
    for m in METRICS {
        let (g, w) = (got[m].as_f64().unwrap(), want[m].as_f64().unwrap());
        assert!((g - w).abs() <= TOL, "{m}: rust {g} vs coco_caption_eval.py {w}");
    }
    let meteor = want["METEOR"].as_f64().expect("METEOR runs on Java with its bundled jar");
    assert!(meteor > 0.0 && meteor < 1.0, "METEOR {meteor}");
    // SPICE downloads Stanford models on first use, which cannot happen offline.
    let spice = &want["SPICE"];
    assert!(spice.as_f64().is_some() || spice.as_str().is_some_and(|s| s.starts_with("SKIP: ")), "SPICE: {spice}");
}

#[test]
fn bad_files_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (p, r) = write_files(dir.path(), &[("a dog".into(), vec!["a dog on a bench".into()])]);
    let other = dir.path().join("other.json");
    std::fs::write(&other, r#"[{"image_id": "9", "caption": "a cat"}]"#).unwrap();
    let dup = dir.path().join("dup.json");
    std::fs::write(&dup, r#"[{"image_id": "0", "caption": "a"}, {"image_id": 0, "caption": "b"}]"#).unwrap();
    for (preds, refs, message) in [
        (other.to_str().unwrap(), r.as_str(), "image 9 has no reference captions"),
        (dup.to_str().unwrap(), r.as_str(), "image 0 already has a prediction"),
        (r.as_str(), r.as_str(), "expected a JSON list"),
        (p.as_str(), p.as_str(), "no \"annotations\" list"),
    ] {
        let out =
            Command::new(BIN).args(["score", "coco", "--predictions", preds, "--references", refs]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "{message}: {stderr}");
    }
}
