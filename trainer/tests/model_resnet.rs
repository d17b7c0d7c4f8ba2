//! The image backbone against the reference's `ofa_tiny` forward pass
//! (`shared/oracles/model-ofa-tiny`), and its train-mode behaviour.

use elfin_trainer::model::resnet::{self, ResNet};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

const PREFIX: &str = "encoder.embed_images.";

/// `$ELFIN_SHARED_DIR` (set by scripts/gpu-check.sh), else the project's shared folder.
fn oracle_dir() -> PathBuf {
    let shared = std::env::var_os("ELFIN_SHARED_DIR")
        .map_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")), PathBuf::from);
    shared.join("oracles/model-ofa-tiny")
}

fn read(file: &str) -> BTreeMap<String, Tensor> {
    let path = oracle_dir().join(file);
    Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())).into_iter().collect()
}

/// An `ofa_tiny` backbone under the caller's path, as the encoder builds it.
fn tiny_backbone(vs: &nn::VarStore, drop_path_rate: f64) -> ResNet {
    let blocks = resnet::stage_blocks("resnet50").unwrap();
    ResNet::new(&(vs.root() / "encoder" / "embed_images"), &blocks, drop_path_rate)
}

/// Copies the oracle's `encoder.embed_images.*` into `vs`, widening float16,
/// after checking that the names and shapes are exactly the reference's.
fn load_oracle_weights(vs: &nn::VarStore) {
    let file: BTreeMap<String, Tensor> =
        read("state_dict.safetensors").into_iter().filter(|(k, _)| k.starts_with(PREFIX)).collect();
    let ours = vs.variables();
    let mut our_names: Vec<&String> = ours.keys().collect();
    our_names.sort();
    assert_eq!(our_names, file.keys().collect::<Vec<_>>(), "state-dict names differ from the reference's");
    assert_eq!(file.len(), 258, "spec §7.2: 43 convs and 43 BNs give 258 keys");
    tch::no_grad(|| {
        for (name, src) in &file {
            let mut dst = ours[name].shallow_clone();
            assert_eq!(dst.size(), src.size(), "shape of {name}");
            assert_eq!(dst.kind() == Kind::Int64, src.kind() == Kind::Int64, "dtype of {name}");
            dst.copy_(&src.to_kind(dst.kind()));
        }
    });
}

#[test]
fn eval_forward_reproduces_the_reference_backbone() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = tiny_backbone(&vs, 0.0);
    load_oracle_weights(&vs);
    let forward = read("forward.safetensors");
    let images = &forward["input.patch_images"];
    let want = &forward["intermediate.resnet_out"];

    let got = tch::no_grad(|| net.forward_t(images, false));
    assert_eq!(got.size(), [2, 1024, 16, 16]);
    let err = (&got - want).abs();
    let max_err = err.max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    // The reference's own float32-vs-float64 noise is 4.7e-4 on values up to
    // 280; a different float32 summation order lands in the same range.
    let bound = (want.abs() * 1e-5 + 2e-3).to_kind(Kind::Float);
    eprintln!("resnet_out: max |diff| {max_err:.3e}, values up to {scale:.1}");
    let outside = err.gt_tensor(&bound).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(outside, 0, "max |diff| {max_err:.3e} with values up to {scale:.1}");
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/gpu-check.sh"]
fn cuda_forward_matches_the_reference_backbone() {
    assert!(tch::Cuda::is_available(), "no CUDA device");
    let vs = nn::VarStore::new(Device::Cuda(0));
    let net = tiny_backbone(&vs, 0.0);
    load_oracle_weights(&vs);
    let forward = read("forward.safetensors");
    let want = &forward["intermediate.resnet_out"];
    let got = tch::no_grad(|| net.forward_t(&forward["input.patch_images"].to_device(Device::Cuda(0)), false));
    let got = got.to_device(Device::Cpu);
    // cuDNN convolutions may run in TF32 (libtorch's default), so compare
    // the relative L2 error rather than elementwise float32 noise.
    let rel = ((&got - want).norm().double_value(&[])) / want.norm().double_value(&[]);
    eprintln!("resnet_out on CUDA: relative L2 error {rel:.3e}");
    assert!(rel < 1e-2, "relative L2 error {rel:.3e}");

    let _ = tch::no_grad(|| net.forward_t(&forward["input.patch_images"].to_device(Device::Cuda(0)), true));
    let counter = &vs.variables()["encoder.embed_images.bn1.num_batches_tracked"];
    assert_eq!(counter.int64_value(&[]), 1, "train mode counts batches on the GPU too");
}

#[test]
fn names_follow_the_reference_for_every_backbone_size() {
    // Spec §7.3: conv + 5 BN entries per module; 1 stem + 3 per block + 1 downsample per stage.
    for (kind, blocks_total) in [("resnet50", 13), ("resnet101", 30), ("resnet152", 47)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let blocks = resnet::stage_blocks(kind).unwrap();
        assert_eq!(blocks.iter().sum::<i64>(), blocks_total);
        let _ = ResNet::new(&vs.root(), &blocks, 0.0);
        let modules = 1 + 3 * blocks_total + 3;
        let vars = vs.variables();
        assert_eq!(vars.len() as i64, modules * 6, "{kind}");
        assert_eq!(vars["layer3.0.downsample.0.weight"].size(), [1024, 512, 1, 1]);
        assert_eq!(vars["layer3.0.downsample.1.num_batches_tracked"].kind(), Kind::Int64);
        let last = format!("layer3.{}.conv3.weight", blocks[2] - 1);
        assert_eq!(vars[&last].size(), [1024, 256, 1, 1], "{kind}");
    }
    assert!(resnet::stage_blocks("resnet18").is_none());
}

#[test]
fn train_mode_uses_batch_statistics_and_updates_the_running_ones() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = tiny_backbone(&vs, 0.0);
    let vars = vs.variables();
    let images = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));

    let stem = images.conv2d(&vars["encoder.embed_images.conv1.weight"], None::<Tensor>, [2, 2], [3, 3], [1, 1], 1);
    let batch_mean = stem.mean_dim(&[0i64, 2, 3][..], false, Kind::Float);
    let batch_var = stem.var_dim(&[0i64, 2, 3][..], true, false);

    let out = tch::no_grad(|| net.forward_t(&images, true));
    assert_eq!(out.size(), [2, 1024, 4, 4]);
    let running_mean = &vars["encoder.embed_images.bn1.running_mean"];
    let running_var = &vars["encoder.embed_images.bn1.running_var"];
    // Momentum 0.1 from the initial (0, 1), with the unbiased batch variance.
    assert!(running_mean.allclose(&(&batch_mean * 0.1), 1e-4, 1e-5, false));
    assert!(running_var.allclose(&(&batch_var * 0.1 + 0.9), 1e-4, 1e-5, false));
    let counter = &vars["encoder.embed_images.layer2.3.bn3.num_batches_tracked"];
    assert_eq!(counter.int64_value(&[]), 1);

    // Eval mode reads the running statistics and leaves them alone.
    let before = running_mean.copy();
    let _ = tch::no_grad(|| net.forward_t(&images, false));
    assert!(running_mean.equal(&before));
    assert_eq!(counter.int64_value(&[]), 1);
}

#[test]
fn drop_path_keeps_or_zeroes_whole_samples_only_in_training() {
    tch::manual_seed(11);
    let xs = Tensor::ones([4000, 3, 2, 2], (Kind::Float, Device::Cpu));
    assert!(resnet::drop_path(&xs, 0.25, false).equal(&xs));
    assert!(resnet::drop_path(&xs, 0.0, true).equal(&xs));

    let out = resnet::drop_path(&xs, 0.25, true);
    let per_sample = out.flatten(1, -1);
    let first = per_sample.select(1, 0).unsqueeze(1);
    assert!(per_sample.equal(&first.expand_as(&per_sample)), "the mask must be per sample");
    let kept_value = 1.0 / 0.75;
    let kept = first.eq(kept_value).sum(Kind::Int64).int64_value(&[]);
    let dropped = first.eq(0.0).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(kept + dropped, 4000, "samples are either scaled by 1/keep or zeroed");
    assert!((2850..3150).contains(&kept), "kept {kept} of 4000 at keep 0.75");
}
