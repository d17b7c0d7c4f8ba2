//! The OFA tokenizer against the reference's ids (shared/data/ofa-bpe/expected.jsonl
//! and the spec's appendix).

mod data_common;

use elfin_trainer::data::{Dictionary, Tokenizer};
use std::process::Command;

fn tokenizer() -> Tokenizer {
    Tokenizer::from_bpe_dir(&data_common::bpe_dir(), 8192, 1000).expect("the OFA BPE folder loads")
}

#[test]
fn every_expected_sentence_gets_the_reference_ids() {
    let tok = tokenizer();
    let text = std::fs::read_to_string(data_common::bpe_dir().join("expected.jsonl")).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let input = case["text"].as_str().unwrap();
        let gpt2: Vec<u32> = case["gpt2_bpe"].as_str().unwrap().split(' ').map(|s| s.parse().unwrap()).collect();
        let ids: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(tok.gpt2_ids(input).unwrap(), gpt2, "GPT-2 BPE of {input:?}");
        assert_eq!(tok.encode(input).unwrap(), ids, "model ids of {input:?}");
        assert_eq!(tok.decode(&ids).unwrap(), input, "decoding {input:?}");
        n += 1;
    }
    assert_eq!(n, 11);
}

#[test]
fn vocabulary_layout_matches_the_appendix() {
    let tok = tokenizer();
    let d = tok.dictionary();
    assert_eq!(d.len(), 59457);
    assert_eq!((d.bos(), d.pad(), d.eos(), d.unk()), (0, 1, 2, 3));
    assert_eq!(d.symbol(4), "13");
    assert_eq!(d.index("<mask>"), 50264);
    assert_eq!(d.index("<code_0>"), 50265);
    assert_eq!(d.index("<bin_0>"), 58457);
    assert_eq!(d.index("<bin_999>"), 59456);
    assert_eq!(d.bin_index(360), 58817);
    assert_eq!(d.bin_of(59421), Some(964));
    assert_eq!(d.index("madeupword0002"), 50263);
    assert_eq!(d.index("not-a-symbol"), Dictionary::UNK);
    assert_eq!(tok.encode_symbols("<bin_360> <bin_253> <bin_661> <bin_964>"), vec![58817, 58710, 59118, 59421]);
}

#[test]
fn appendix_caption_and_refcoco_sources() {
    let tok = tokenizer();
    let caption = tok.encode(" the sun sets over the trees beyond some docks").unwrap();
    assert_eq!(caption, vec![5, 3778, 3880, 81, 5, 3980, 1684, 103, 33970]);
    let src = tok.encode(elfin_trainer::data::caption::PROMPT).unwrap();
    assert_eq!(src, vec![99, 473, 5, 2274, 6190, 116]);
    let expr = elfin_trainer::data::refcoco::pre_caption("A woman in a white blouse holding a glass of wine.", 80);
    assert_eq!(expr, "a woman in a white blouse holding a glass of wine.");
    let ids = tok.encode(&elfin_trainer::data::refcoco::prompt(&expr)).unwrap();
    assert_eq!(
        ids,
        vec![61, 976, 473, 5, 2788, 22, 10, 693, 11, 10, 1104, 3089, 11556, 1826, 10, 4049, 9, 3984, 4, 22, 6190, 116]
    );
    // Bins and specials pass through decoding literally; bos/eos/pad are dropped.
    assert_eq!(tok.decode(&[0, 58817, 5, 2, 1]).unwrap(), "<bin_360> the");
}

#[test]
fn tokenize_command_prints_json_ids() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_elfin-train"))
        .args(["tokenize", "--bpe-dir"])
        .arg(data_common::bpe_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b" what does the image describe?\nTwo dogs playing in the snow\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["ids"], serde_json::json!([99, 473, 5, 2274, 6190, 116]));
    assert_eq!(lines[1]["ids"], serde_json::json!([9058, 3678, 816, 11, 5, 1958]));
}
