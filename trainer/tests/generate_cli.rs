//! `elfin-train generate` on the public `ofa_tiny` oracle model
//! (`shared/oracles/model-ofa-tiny`): greedy (beam 1) equals an argmax
//! decoding by full forward passes, and beam search equals our library's
//! search run without the incremental cache; bad input exits 2.

use elfin_trainer::generate::{beam_search, BeamSearchConfig, OfaStepModel};
use elfin_trainer::model::checkpoint_load::{read_tensors, write_tensors};
use elfin_trainer::model::{load_checkpoint, NetInput, OfaConfig, OfaModel, Precision};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{nn, Device, Kind, Tensor};

const VOCAB: i64 = 9697;
const EOS: i64 = 2;

fn oracle_dir() -> PathBuf {
    let shared = std::env::var_os("ELFIN_SHARED_DIR")
        .map_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared").into(), PathBuf::from);
    shared.join("oracles/model-ofa-tiny")
}

fn oracle_input() -> NetInput {
    let f = read_tensors(&oracle_dir().join("forward.safetensors")).unwrap();
    NetInput {
        src_tokens: f["input.src_tokens"].shallow_clone(),
        src_lengths: f["input.src_lengths"].shallow_clone(),
        patch_images: f["input.patch_images"].shallow_clone(),
        patch_masks: f["input.patch_masks"].to_kind(Kind::Bool),
        prev_output_tokens: Tensor::zeros([2, 0], (Kind::Int64, Device::Cpu)),
    }
}

fn write_inputs(dir: &Path, names: &[&str]) -> PathBuf {
    let f = read_tensors(&oracle_dir().join("forward.safetensors")).unwrap();
    let path = dir.join("inputs.safetensors");
    let keyed: Vec<(String, &Tensor)> = names.iter().map(|n| (n.to_string(), &f[&format!("input.{n}")])).collect();
    write_tensors(&path, keyed.iter().map(|(k, v)| (k.as_str(), *v)), HashMap::new()).unwrap();
    path
}

const INPUTS: [&str; 4] = ["src_tokens", "src_lengths", "patch_images", "patch_masks"];

fn generate(inputs: &Path, out: &Path, flags: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elfin-train"))
        .args(["generate", "--arch", "ofa_tiny", "--disable-entangle", "--checkpoint"])
        .arg(oracle_dir().join("state_dict.safetensors"))
        .arg("--inputs")
        .arg(inputs)
        .arg("--out")
        .arg(out)
        .args(flags)
        .output()
        .unwrap()
}

fn generated(dir: &Path, flags: &[&str]) -> BTreeMap<String, Tensor> {
    let inputs = write_inputs(dir, &INPUTS);
    let out = dir.join("out.safetensors");
    let o = generate(&inputs, &out, flags);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    read_tensors(&out).unwrap()
}

fn tiny() -> (nn::VarStore, OfaModel) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = OfaModel::new(&vs.root(), &OfaConfig::finetuning("ofa_tiny").unwrap(), VOCAB);
    load_checkpoint(&mut vs, &oracle_dir().join("state_dict.safetensors")).unwrap();
    (vs, model)
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t).unwrap()
}

/// Greedy decoding by a full decoder pass over the whole prefix at every step.
fn argmax_decode(model: &OfaModel, input: &NetInput, row: i64, min_len: i64, max_len: i64) -> (Vec<i64>, Vec<f32>) {
    let pick = |t: &Tensor| t.narrow(0, row, 1);
    let enc = model.encode(
        &pick(&input.src_tokens),
        Some(&pick(&input.patch_images)),
        Some(&pick(&input.patch_masks)),
        false,
    );
    let (mut prefix, mut scores) = (vec![0i64], Vec::new());
    for step in 0..=max_len {
        let logits = model.decode(&Tensor::from_slice(&prefix).unsqueeze(0), &enc, None, false);
        let lp = logits.select(1, -1).squeeze_dim(0).log_softmax(-1, Kind::Float);
        let _ = lp.narrow(0, 1, 1).fill_(f64::NEG_INFINITY);
        if step < min_len {
            let _ = lp.narrow(0, EOS, 1).fill_(f64::NEG_INFINITY);
        }
        let next = if step == max_len { EOS } else { lp.argmax(0, false).int64_value(&[]) };
        scores.push(lp.double_value(&[next]) as f32);
        prefix.push(next);
        if next == EOS {
            break;
        }
    }
    (prefix[1..].to_vec(), scores)
}

#[test]
fn greedy_generation_is_the_argmax_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let got = generated(dir.path(), &["--beam", "1", "--min-len", "2", "--max-len-b", "6"]);
    let (_vs, model) = tiny();
    let input = oracle_input();
    for i in 0..2 {
        let (tokens, scores) = tch::no_grad(|| argmax_decode(&model, &input, i, 2, 6));
        assert_eq!(ints(&got[&format!("sample.{i}.hypo.0.tokens")]), tokens, "sample {i}");
        let positional = floats(&got[&format!("sample.{i}.hypo.0.positional_scores")]);
        assert_eq!(positional.len(), tokens.len());
        for (g, w) in positional.iter().zip(&scores) {
            assert!((g - w).abs() < 1e-4, "sample {i}: positional score {g} vs {w}");
        }
        let hypo = floats(&got[&format!("sample.{i}.hypo_scores")]);
        let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / scores.len() as f64;
        assert!((f64::from(hypo[0]) - mean).abs() < 1e-4, "sample {i}: score {} vs {mean}", hypo[0]);
    }
}

#[test]
fn beam_generation_matches_the_library_search_without_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--beam", "4", "--nbest", "3", "--min-len", "3", "--max-len-b", "7", "--no-repeat-ngram-size", "3"];
    let got = generated(dir.path(), &flags);
    let (_vs, model) = tiny();
    let cfg = BeamSearchConfig {
        beam: 4,
        max_len_a: 0.0,
        max_len_b: 7,
        min_len: 3,
        no_repeat_ngram_size: 3,
        lenpen: 1.0,
        temperature: 1.0,
        unk_penalty: 0.0,
        constraint_range: None,
        bos: 0,
        pad: 1,
        eos: EOS,
        unk: 3,
    };
    let input = oracle_input();
    let want = tch::no_grad(|| {
        let mut step = OfaStepModel::new(&model, &input, 4, false, Precision::Fp32, Device::Cpu);
        beam_search(&mut step, 2, 10, VOCAB, &cfg).unwrap()
    });
    for (i, hyps) in want.iter().enumerate() {
        let scores = floats(&got[&format!("sample.{i}.hypo_scores")]);
        assert_eq!(scores.len(), 3);
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
        for (j, h) in hyps.iter().take(3).enumerate() {
            let tokens = ints(&got[&format!("sample.{i}.hypo.{j}.tokens")]);
            assert_eq!(tokens, h.tokens, "sample {i} hypothesis {j}");
            assert!(tokens.len() >= 4 && tokens.len() <= 8 && tokens.last() == Some(&EOS));
            let positional = floats(&got[&format!("sample.{i}.hypo.{j}.positional_scores")]);
            assert_eq!(positional.len(), tokens.len());
            for (g, w) in positional.iter().zip(&h.positional_scores) {
                assert!((g - w).abs() < 1e-4, "sample {i} hypothesis {j}: {g} vs {w}");
            }
            // Length-normalised: the mean of the token scores.
            let mean = positional.iter().map(|&s| f64::from(s)).sum::<f64>() / positional.len() as f64;
            assert!((f64::from(scores[j]) - mean).abs() < 1e-5, "{} vs {mean}", scores[j]);
            assert!((f64::from(scores[j]) - h.score).abs() < 1e-4);
        }
    }
    assert!(!got.contains_key("sample.0.hypo.3.tokens"), "--nbest 3 keeps three");
}

#[test]
fn bad_input_gets_one_clear_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let no_images = write_inputs(dir.path(), &["src_tokens", "src_lengths", "patch_masks"]);
    let cases: [(&Path, &[&str], &str); 3] = [
        (&no_images, &[], "the inputs file has no `patch_images`"),
        (&no_images, &["--beam", "2", "--nbest", "3"], "--nbest in 1..=--beam"),
        (Path::new("/nonexistent/in.safetensors"), &[], "/nonexistent/in.safetensors"),
    ];
    for (inputs, flags, message) in cases {
        let o = generate(inputs, &out, flags);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(message) && stderr.starts_with("elfin-train generate: error:"), "{message}: {stderr}");
    }
    assert!(!out.exists());
}
