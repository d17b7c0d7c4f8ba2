//! `ofa_tiny` against one forward pass of the reference
//! (`shared/oracles/model-ofa-tiny`, see its README): the converted
//! state dict loads strictly, and logits and encoder output agree.

use elfin_trainer::model::relative_position::{code_position_ids, image_bucket_table, token_bucket_table};
use elfin_trainer::model::{load_checkpoint, OfaConfig, OfaModel};
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Tensor};

/// The oracle folder under `$ELFIN_SHARED_DIR` (set by scripts/gpu-check.sh),
/// else under the project's shared folder.
fn oracle_dir() -> std::path::PathBuf {
    let shared = std::env::var_os("ELFIN_SHARED_DIR")
        .map_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared").into(), std::path::PathBuf::from);
    shared.join("oracles/model-ofa-tiny")
}

/// The oracle's reduced dictionary.
const VOCAB: i64 = 9697;
/// The README's suggested tolerance for a float32 implementation.
const TOL: f64 = 1e-4;

fn read(file: &str) -> BTreeMap<String, Tensor> {
    let path = oracle_dir().join(file);
    Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())).into_iter().collect()
}

fn tiny() -> (nn::VarStore, OfaModel) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = OfaModel::new(&vs.root(), &OfaConfig::finetuning("ofa_tiny").unwrap(), VOCAB);
    load_checkpoint(&mut vs, &oracle_dir().join("state_dict.safetensors")).unwrap();
    (vs, model)
}

fn max_diff(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    (got - want).abs().max().double_value(&[])
}

/// The reference's time-major encoder output [T, B, C] as batch-major.
fn batch_major(t: &Tensor) -> Tensor {
    t.transpose(0, 1)
}

#[test]
fn buffers_equal_the_tables_we_compute() {
    let buffers = read("buffers.safetensors");
    let as_i64 = |k: &str| buffers[k].to_kind(Kind::Int64);
    assert!(as_i64("encoder.token_rp_bucket").equal(&token_bucket_table(256, 1024)));
    assert!(as_i64("encoder.image_rp_bucket").equal(&image_bucket_table(42)));
    assert!(as_i64("decoder.image_position_idx").equal(&code_position_ids(128, 42, 1026)));
}

#[test]
fn forward_reproduces_the_reference() {
    let (_vs, model) = tiny();
    let f = read("forward.safetensors");
    let masks = f["input.patch_masks"].to_kind(Kind::Bool);
    tch::no_grad(|| {
        let enc = model.encode(&f["input.src_tokens"], Some(&f["input.patch_images"]), Some(&masks), false);
        let want_pad = f["output.encoder_padding_mask"].to_kind(Kind::Bool);
        assert!(enc.padding_mask.equal(&want_pad));
        let d = max_diff(&enc.position_embeddings, &f["output.encoder_position_embeddings"]);
        assert!(d < TOL, "position embeddings differ by {d}");
        let d = max_diff(&enc.out, &batch_major(&f["output.encoder_out"]));
        assert!(d < TOL, "encoder_out differs by {d}");
        let logits = model.decode(&f["input.prev_output_tokens"], &enc, None, false);
        let d = max_diff(&logits, &f["output.logits"]);
        assert!(d < TOL, "logits differ by {d}");
    });
}

#[test]
fn layer_by_layer_from_the_reference_backbone_output() {
    let (_vs, model) = tiny();
    let f = read("forward.safetensors");
    let masks = f["input.patch_masks"].to_kind(Kind::Bool);
    tch::no_grad(|| {
        let enc =
            model.encode_features(&f["input.src_tokens"], Some(&f["intermediate.resnet_out"]), Some(&masks), false);
        let d = max_diff(&enc.out, &batch_major(&f["output.encoder_out"]));
        assert!(d < 2e-5, "encoder_out from the reference's features differs by {d}");
        let logits = model.decode(&f["input.prev_output_tokens"], &enc, None, false);
        let d = max_diff(&logits, &f["output.logits"]);
        assert!(d < 2e-5, "logits from the reference's features differ by {d}");
    });
}

#[test]
fn an_image_less_row_matches_the_reference() {
    let (_vs, model) = tiny();
    let f = read("forward.safetensors");
    let masks = f["variant_nopatch1.input.patch_masks"].to_kind(Kind::Bool);
    tch::no_grad(|| {
        let enc = model.encode(&f["input.src_tokens"], Some(&f["input.patch_images"]), Some(&masks), false);
        assert!(enc.padding_mask.equal(&f["variant_nopatch1.output.encoder_padding_mask"].to_kind(Kind::Bool)));
        let d = max_diff(&enc.out, &batch_major(&f["variant_nopatch1.output.encoder_out"]));
        assert!(d < TOL, "encoder_out differs by {d}");
        let logits = model.decode(&f["input.prev_output_tokens"], &enc, None, false);
        let d = max_diff(&logits, &f["variant_nopatch1.output.logits"]);
        assert!(d < TOL, "logits differ by {d}");
    });
}

#[test]
fn image_code_rows_match_the_reference() {
    let (_vs, model) = tiny();
    let f = read("forward.safetensors");
    let masks = f["input.patch_masks"].to_kind(Kind::Bool);
    let code_masks = f["variant_codemask.input.code_masks"].to_kind(Kind::Bool);
    tch::no_grad(|| {
        let enc = model.encode(&f["input.src_tokens"], Some(&f["input.patch_images"]), Some(&masks), false);
        let logits = model.decode_with_code_masks(&f["input.prev_output_tokens"], &enc, &code_masks, None, false);
        let d = max_diff(&logits, &f["variant_codemask.output.logits"]);
        assert!(d < TOL, "logits differ by {d}");
    });
}
