//! The model on CUDA: fp32 parity with the oracle, fp16 and bf16 autocast.

use elfin_trainer::model::checkpoint_load::read_tensors;
use elfin_trainer::model::{load_checkpoint, OfaConfig, OfaModel, Precision};
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Tensor};

const GPU: Device = Device::Cuda(0);

/// The oracle folder under `$ELFIN_SHARED_DIR` (set by scripts/gpu-check.sh),
/// else under the project's shared folder.
fn oracle_dir() -> std::path::PathBuf {
    let shared = std::env::var_os("ELFIN_SHARED_DIR")
        .map_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared").into(), std::path::PathBuf::from);
    shared.join("oracles/model-ofa-tiny")
}

fn tiny_on_gpu() -> (nn::VarStore, OfaModel, BTreeMap<String, Tensor>) {
    assert!(tch::Cuda::is_available(), "no CUDA device");
    let mut vs = nn::VarStore::new(GPU);
    let model = OfaModel::new(&vs.root(), &OfaConfig::finetuning("ofa_tiny").unwrap(), 9697);
    load_checkpoint(&mut vs, &oracle_dir().join("state_dict.safetensors")).unwrap();
    let f = read_tensors(&oracle_dir().join("forward.safetensors")).unwrap();
    let f = f.into_iter().map(|(k, v)| (k, v.to_device(GPU))).collect();
    (vs, model, f)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/gpu-check.sh"]
fn cuda_fp32_reproduces_the_oracle() {
    let (_vs, model, f) = tiny_on_gpu();
    let masks = f["input.patch_masks"].to_kind(Kind::Bool);
    tch::no_grad(|| {
        // From the reference's backbone output: no convolution (cuDNN may use TF32).
        let enc =
            model.encode_features(&f["input.src_tokens"], Some(&f["intermediate.resnet_out"]), Some(&masks), false);
        let logits = model.decode(&f["input.prev_output_tokens"], &enc, None, false);
        let d = max_diff(&logits, &f["output.logits"]);
        assert!(d < 1e-4, "CUDA fp32 logits differ by {d}");
    });
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/gpu-check.sh"]
fn fp16_and_bf16_autocast_stay_close_to_fp32() {
    let (_vs, model, f) = tiny_on_gpu();
    let masks = f["input.patch_masks"].to_kind(Kind::Bool);
    let run = |precision: Precision| {
        tch::no_grad(|| {
            precision.run(GPU, || {
                let enc = model.encode(&f["input.src_tokens"], Some(&f["input.patch_images"]), Some(&masks), false);
                model.decode(&f["input.prev_output_tokens"], &enc, None, false)
            })
        })
    };
    let full = run(Precision::Fp32);
    assert_eq!(full.kind(), Kind::Float);
    // Logits span about ±2; the tolerances allow fp16's 11 and bf16's 8
    // mantissa bits through 3 ResNet stages and 8 transformer layers (not yet
    // measured on a GPU: tighten them once gpu-check has run).
    for (precision, kind, tol) in [(Precision::Fp16, Kind::Half, 5e-2), (Precision::Bf16, Kind::BFloat16, 2.5e-1)] {
        let logits = run(precision);
        assert_eq!(logits.kind(), kind, "{precision:?} autocast did not run the output projection in {kind:?}");
        let d = max_diff(&logits, &full);
        assert!(d < tol, "{precision:?} logits differ from fp32 by {d}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/gpu-check.sh"]
fn a_bf16_training_step_gives_finite_gradients_and_incremental_decoding_agrees() {
    let (vs, model, f) = tiny_on_gpu();
    let masks = f["input.patch_masks"].to_kind(Kind::Bool);
    let prev = &f["input.prev_output_tokens"];
    let loss = Precision::Bf16.run(GPU, || {
        let enc = model.encode(&f["input.src_tokens"], Some(&f["input.patch_images"]), Some(&masks), true);
        model.decode(prev, &enc, None, true).log_softmax(-1, Kind::Float).mean(Kind::Float)
    });
    loss.backward();
    for (name, var) in vs.variables() {
        if var.requires_grad() && var.grad().defined() {
            assert!(var.grad().isfinite().all().int64_value(&[]) == 1, "non-finite gradient for {name}");
        }
    }
    tch::no_grad(|| {
        Precision::Fp16.run(GPU, || {
            let enc = model.encode(&f["input.src_tokens"], Some(&f["input.patch_images"]), Some(&masks), false);
            let full = model.decode(prev, &enc, None, false);
            let mut cache = model.new_cache();
            for t in 1..=prev.size()[1] {
                let step = model.decode(&prev.narrow(1, 0, t), &enc, Some(&mut cache), false);
                let d = max_diff(&step, &full.narrow(1, t - 1, 1));
                assert!(d < 2e-2, "fp16 step {t} differs from full decoding by {d}");
            }
        })
    });
}
