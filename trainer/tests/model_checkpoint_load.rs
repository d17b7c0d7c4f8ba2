//! Saving and strict loading of model weights under the reference's names,
//! the loader's documented exceptions (spec §7.5), and `elfin-train forward`
//! on the `ofa_tiny` oracle.

use elfin_trainer::model::checkpoint_load::{read_layout, read_tensors, write_tensors};
use elfin_trainer::model::{load_checkpoint, save_checkpoint, NetInput, OfaConfig, OfaModel};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use tch::{nn, Device, Kind, Tensor};

/// The oracle folder under `$ELFIN_SHARED_DIR` (set by scripts/gpu-check.sh),
/// else under the project's shared folder.
fn oracle_dir() -> std::path::PathBuf {
    let shared = std::env::var_os("ELFIN_SHARED_DIR")
        .map_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared").into(), std::path::PathBuf::from);
    shared.join("oracles/model-ofa-tiny")
}

fn model(seed: i64, vocab: i64) -> (nn::VarStore, OfaModel) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = OfaModel::new(&vs.root(), &OfaConfig::finetuning("ofa_micro").unwrap(), vocab);
    (vs, m)
}

fn input() -> NetInput {
    tch::manual_seed(3);
    let src = Tensor::from_slice2(&[[0i64, 7, 8, 9, 2], [0, 10, 2, 1, 1]]);
    NetInput {
        src_lengths: Tensor::from_slice(&[5i64, 3]),
        src_tokens: src,
        patch_images: Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)),
        patch_masks: Tensor::from_slice(&[true, true]),
        prev_output_tokens: Tensor::from_slice2(&[[0i64, 5, 6], [0, 11, 1]]),
    }
}

/// A saved `ofa_micro` and its tensors, to damage.
fn saved(dir: &Path, vocab: i64) -> BTreeMap<String, Tensor> {
    let (vs, _) = model(1, vocab);
    let path = dir.join("full.safetensors");
    save_checkpoint(&vs, &path).unwrap();
    read_tensors(&path).unwrap()
}

fn write(dir: &Path, tensors: &BTreeMap<String, Tensor>) -> std::path::PathBuf {
    let path = dir.join("edited.safetensors");
    write_tensors(&path, tensors.iter().map(|(k, v)| (k.as_str(), v)), HashMap::new()).unwrap();
    path
}

fn load_error(path: &Path, vocab: i64) -> String {
    let (mut vs, _) = model(2, vocab);
    format!("{:#}", load_checkpoint(&mut vs, path).unwrap_err())
}

#[test]
fn a_saved_model_loads_back_exactly_with_the_reference_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("micro.safetensors");
    let (vs, a) = model(1, 300);
    save_checkpoint(&vs, &path).unwrap();
    let (mut vs2, b) = model(2, 300);
    // One input for all three: the other tests of this file reseed the global generator meanwhile.
    let x = input();
    let before = tch::no_grad(|| b.forward_t(&x, false));
    load_checkpoint(&mut vs2, &path).unwrap();
    let want = tch::no_grad(|| a.forward_t(&x, false));
    let got = tch::no_grad(|| b.forward_t(&x, false));
    assert!(!before.equal(&want), "two seeds gave the same model");
    assert!(got.equal(&want), "the loaded model differs from the saved one");

    let (shapes, metadata) = read_layout(&path).unwrap();
    for tied in ["decoder.embed_tokens.weight", "decoder.output_projection.weight"] {
        assert_eq!(shapes[tied], [300, 64], "{tied} is not listed as an alias");
    }
    assert!(metadata["aliases"].contains("\"decoder.output_projection.weight\":\"encoder.embed_tokens.weight\""));
    assert!(shapes.contains_key("encoder.embed_images.layer1.0.downsample.1.num_batches_tracked"));
}

#[test]
fn missing_and_unexpected_keys_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = saved(dir.path(), 300);
    let _ = tensors.remove("decoder.layers.1.fc1.bias").unwrap();
    let _ = tensors.remove("encoder.pos_ln.weight").unwrap();
    tensors.insert("encoder.layers.0.w_resid".into(), Tensor::ones([64], (Kind::Float, Device::Cpu)));
    let err = load_error(&write(dir.path(), &tensors), 300);
    assert!(err.contains("missing keys (2): decoder.layers.1.fc1.bias, encoder.pos_ln.weight"), "{err}");
    assert!(err.contains("unexpected keys (1): encoder.layers.0.w_resid"), "{err}");
}

#[test]
fn a_shape_mismatch_names_the_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = saved(dir.path(), 300);
    tensors.insert("encoder.layers.0.fc1.weight".into(), Tensor::zeros([128, 64], (Kind::Float, Device::Cpu)));
    let err = load_error(&write(dir.path(), &tensors), 300);
    assert!(
        err.contains("shape mismatch for encoder.layers.0.fc1.weight: checkpoint [128, 64], model [256, 64]"),
        "{err}"
    );
}

#[test]
fn the_reference_buffers_and_optional_keys_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = saved(dir.path(), 300);
    let one = Tensor::from_slice(&[3.0f32]);
    tensors.insert("encoder.version".into(), one.shallow_clone());
    tensors.insert("decoder.version".into(), one);
    tensors.insert("decoder.image_position_idx".into(), Tensor::zeros([1026], (Kind::Int64, Device::Cpu)));
    let buffers = read_tensors(&oracle_dir().join("buffers.safetensors")).unwrap();
    tensors.insert("encoder.token_rp_bucket".into(), buffers["encoder.token_rp_bucket"].shallow_clone());
    tensors.insert("decoder.image_rp_bucket".into(), buffers["encoder.image_rp_bucket"].shallow_clone());
    tensors.retain(|k, _| !k.ends_with("num_batches_tracked"));
    let (mut vs, _) = model(2, 300);
    load_checkpoint(&mut vs, &write(dir.path(), &tensors)).unwrap();

    // A bucket table that is not ours is refused.
    let bad = buffers["encoder.token_rp_bucket"].to_kind(Kind::Int64) + 1;
    tensors.insert("encoder.token_rp_bucket".into(), bad);
    let err = load_error(&write(dir.path(), &tensors), 300);
    assert!(err.contains("encoder.token_rp_bucket differs from the table this model computes"), "{err}");
}

#[test]
fn tied_names_with_different_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = saved(dir.path(), 300);
    let other = &tensors["encoder.embed_tokens.weight"] + 1.0;
    tensors.insert("decoder.output_projection.weight".into(), other);
    let err = load_error(&write(dir.path(), &tensors), 300);
    assert!(err.contains("decoder.output_projection.weight differs from encoder.embed_tokens.weight"), "{err}");
}

#[test]
fn a_smaller_vocabulary_grows_and_a_larger_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = saved(dir.path(), 250);
    let path = write(dir.path(), &tensors);
    let (mut vs, _) = model(2, 300);
    load_checkpoint(&mut vs, &path).unwrap();
    let emb = vs.variables()["encoder.embed_tokens.weight"].shallow_clone();
    assert!(emb.narrow(0, 0, 250).equal(&tensors["encoder.embed_tokens.weight"]));
    // New rows are N(0, C^-1/2), as the reference appends them.
    let std = emb.narrow(0, 250, 50).std(true).double_value(&[]);
    assert!((std - 64f64.powf(-0.5)).abs() < 0.015, "new rows have std {std}");

    let err = load_error(&path, 200);
    assert!(
        err.contains("shape mismatch for encoder.embed_tokens.weight: checkpoint [250, 64], model [200, 64]"),
        "{err}"
    );
}

#[test]
fn forward_command_reproduces_the_oracle() {
    let oracle = oracle_dir();
    let dir = tempfile::tempdir().unwrap();
    let f = read_tensors(&oracle.join("forward.safetensors")).unwrap();
    let inputs = dir.path().join("inputs.safetensors");
    let names = ["src_tokens", "src_lengths", "patch_images", "patch_masks", "prev_output_tokens"];
    let keyed: Vec<(String, &Tensor)> = names.iter().map(|n| (n.to_string(), &f[&format!("input.{n}")])).collect();
    write_tensors(&inputs, keyed.iter().map(|(k, v)| (k.as_str(), *v)), HashMap::new()).unwrap();
    let out = dir.path().join("out.safetensors");
    let status =
        Command::new(std::env::var_os("ELFIN_TRAIN_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_elfin-train").into()))
            .args(["forward", "--arch", "ofa_tiny", "--disable-entangle", "--checkpoint"])
            .arg(oracle.join("state_dict.safetensors"))
            .arg("--inputs")
            .arg(&inputs)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let got = read_tensors(&out).unwrap();
    let d = (&got["logits"] - &f["output.logits"]).abs().max().double_value(&[]);
    assert!(d < 1e-4, "logits differ by {d}");
    let want_enc = f["output.encoder_out"].transpose(0, 1);
    let d = (&got["encoder_out"] - want_enc).abs().max().double_value(&[]);
    assert!(d < 1e-4, "encoder_out differs by {d}");
}

#[test]
fn forward_command_explains_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, _) = model(1, 300);
    let ckpt = dir.path().join("micro.safetensors");
    save_checkpoint(&vs, &ckpt).unwrap();
    let mut batch = input();
    batch.prev_output_tokens = Tensor::from_slice2(&[[0i64, 5, 300], [0, 11, 1]]);
    let inputs = dir.path().join("inputs.safetensors");
    let named = [
        ("src_tokens", &batch.src_tokens),
        ("patch_images", &batch.patch_images),
        ("patch_masks", &batch.patch_masks),
        ("prev_output_tokens", &batch.prev_output_tokens),
    ];
    write_tensors(&inputs, named, HashMap::new()).unwrap();
    let out =
        Command::new(std::env::var_os("ELFIN_TRAIN_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_elfin-train").into()))
            .args(["forward", "--arch", "ofa_micro", "--checkpoint"])
            .arg(&ckpt)
            .arg("--inputs")
            .arg(&inputs)
            .arg("--out")
            .arg(dir.path().join("out.safetensors"))
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`prev_output_tokens` holds token ids in [0, 300], outside the checkpoint's vocabulary of 300"),
        "{stderr}"
    );
}

#[test]
fn the_reference_arguments_in_a_checkpoint_set_the_options() {
    let oracle = oracle_dir();
    let args: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(oracle.join("args.json")).unwrap()).unwrap();
    let cfg = OfaConfig::from_reference_args(&args).unwrap();
    let mut want = OfaConfig::finetuning("ofa_tiny").unwrap();
    want.patch_image_size = 256;
    assert_eq!(cfg, want);

    // With the arguments in the header, `forward` needs no model flags.
    let dir = tempfile::tempdir().unwrap();
    let state = read_tensors(&oracle.join("state_dict.safetensors")).unwrap();
    let ckpt = dir.path().join("tiny.safetensors");
    let metadata = HashMap::from([("args".to_string(), args.to_string())]);
    write_tensors(&ckpt, state.iter().map(|(k, v)| (k.as_str(), v)), metadata).unwrap();
    let f = read_tensors(&oracle.join("forward.safetensors")).unwrap();
    let inputs = dir.path().join("inputs.safetensors");
    let names = ["src_tokens", "patch_images", "patch_masks", "prev_output_tokens"];
    let keyed: Vec<(String, &Tensor)> = names.iter().map(|n| (n.to_string(), &f[&format!("input.{n}")])).collect();
    write_tensors(&inputs, keyed.iter().map(|(k, v)| (k.as_str(), *v)), HashMap::new()).unwrap();
    let out = dir.path().join("out.safetensors");
    let run =
        Command::new(std::env::var_os("ELFIN_TRAIN_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_elfin-train").into()))
            .args(["forward", "--arch", "ofa_tiny", "--checkpoint"])
            .arg(&ckpt)
            .arg("--inputs")
            .arg(&inputs)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let d = (&read_tensors(&out).unwrap()["logits"] - &f["output.logits"]).abs().max().double_value(&[]);
    assert!(d < 1e-4, "logits differ by {d}");
}
