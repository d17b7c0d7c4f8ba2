//! The reference's measured training step, for side-by-side comparison with
//! other implementations: forward + encouraging loss + backward + clipping +
//! Adam, `ofa_tiny`, batch 8, 256×256 images, 20 source + 20 target tokens,
//! the full 59 457-symbol vocabulary, dropout 0.1, drop path 0.1, label
//! smoothing 0.1, log_end 0.75, lr 1e-5, clip norm 1.0, weight decay 0.01;
//! 2 warm-up steps, then 5 timed ones. Prints one JSON line: `median_s`,
//! `min_s`, `max_s` of the step times and the median of each phase.
//!
//!     cargo bench -p elfin-trainer --bench step -- [--threads N] [--bf16] [--adam fused|tensor-ops] [--compare-adam]
//!
//! `--bf16`: the forward under bfloat16 autocast on the CPU. `--adam
//! tensor-ops` steps with the reference's per-tensor libtorch ops instead of
//! the fused kernel; `--compare-adam` adds, after the timed steps, 5
//! optimiser steps of each kernel alternately on the same model (their
//! medians and ratio, measured in the same run).

use clap::Parser;
use elfin_trainer::criterion::{backward_with_grad, Criterion, CriterionArgs};
use elfin_trainer::dist::{trainable_named, GradSync, ProcessGroup};
use elfin_trainer::model::{NetInput, OfaConfig, OfaModel, Precision};
use elfin_trainer::optim::{clip_grad_norm, Adam, AdamKernel, ClipRule, OptimArgs};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

const BATCH: i64 = 8;
const SRC_LEN: i64 = 20;
const TGT_LEN: i64 = 20;
const VOCAB: i64 = 59457;
const IMAGE: i64 = 256;
const WARMUP: usize = 2;
const TIMED: usize = 5;
const PAD: i64 = 1;
const EOS: i64 = 2;

#[derive(Parser)]
struct Cli {
    /// libtorch intra-op threads (default: libtorch's own choice).
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, default_value = "fused")]
    adam: String,
    #[arg(long)]
    compare_adam: bool,
    #[arg(long, default_value = "ofa_tiny")]
    arch: String,
    /// Accepted for `cargo bench`, which passes it to every bench binary.
    #[arg(long, hide = true)]
    bench: bool,
    #[command(flatten)]
    criterion: CriterionArgs,
    /// The optimiser's flags; `--bf16` among them runs the forward under bfloat16 autocast.
    #[command(flatten)]
    optim: OptimArgs,
}

fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn kernel(name: &str) -> AdamKernel {
    match name {
        "fused" => AdamKernel::Fused,
        "tensor-ops" => AdamKernel::TensorOps,
        other => panic!("--adam takes fused or tensor-ops, not {other}"),
    }
}

fn main() {
    let defaults = [
        "step",
        "--label-smoothing=0.1",
        "--log-end=0.75",
        "--lr=1e-5",
        "--clip-norm=1.0",
        "--weight-decay=0.01",
        "--adam-betas=(0.9,0.999)",
        "--adam-eps=1e-8",
    ];
    let cli = Cli::parse_from(defaults.iter().map(|s| s.to_string()).chain(std::env::args().skip(1)));
    if let Some(n) = cli.threads {
        tch::set_num_threads(n);
    }
    let device = Device::Cpu;
    let precision = if cli.optim.bf16 { Precision::Bf16 } else { Precision::Fp32 };
    tch::manual_seed(1);
    let mut cfg = OfaConfig::finetuning(&cli.arch).expect("--arch");
    cfg.dropout = 0.1;
    cfg.encoder_drop_path_rate = 0.1;
    cfg.decoder_drop_path_rate = 0.1;
    cfg.patch_image_size = IMAGE;
    let vs = nn::VarStore::new(device);
    let model = OfaModel::new(&vs.root(), &cfg, VOCAB);
    let input = NetInput {
        src_tokens: Tensor::randint_low(4, VOCAB, [BATCH, SRC_LEN], (Kind::Int64, device)),
        src_lengths: Tensor::full([BATCH], SRC_LEN, (Kind::Int64, device)),
        patch_images: Tensor::rand([BATCH, 3, IMAGE, IMAGE], (Kind::Float, device)) * 2 - 1,
        patch_masks: Tensor::ones([BATCH], (Kind::Bool, device)),
        prev_output_tokens: Tensor::randint_low(4, VOCAB, [BATCH, TGT_LEN], (Kind::Int64, device)),
    };
    let target = Tensor::randint_low(4, VOCAB, [BATCH, TGT_LEN], (Kind::Int64, device));
    let criterion = Criterion::new(&cli.criterion, PAD, EOS).expect("criterion flags");
    let params = trainable_named(&vs);
    let pg = ProcessGroup::single();
    let mut sync = GradSync::new(params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), 25 << 20)
        .expect("gradient buckets");
    let mut adam = Adam::new(&cli.optim);
    adam.set_kernel(kernel(&cli.adam));
    let zero_grads = || {
        for (_, p) in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    };

    let (mut steps, mut fwd_bwd, mut clip, mut optimizer) = (vec![], vec![], vec![], vec![]);
    for i in 0..WARMUP + TIMED {
        let start = Instant::now();
        let logits = precision.run(device, || model.forward_t(&input, true));
        let out = criterion.compute(&logits, &target, None, None, i as i64).expect("loss");
        backward_with_grad(&logits, &out.grad_logits).expect("backward");
        sync.sync_sum(&pg).expect("gradient sync");
        let clipping = Instant::now();
        let multiplier = 1.0 / (out.sample_size as f64).max(1.0);
        clip_grad_norm(&sync.grads(), cli.optim.clip_norm, multiplier, ClipRule::WithEpsilon);
        let stepping = Instant::now();
        adam.step(&params, cli.optim.lr).expect("Adam step");
        zero_grads();
        let end = Instant::now();
        if i >= WARMUP {
            steps.push((end - start).as_secs_f64());
            fwd_bwd.push((clipping - start).as_secs_f64());
            clip.push((stepping - clipping).as_secs_f64());
            optimizer.push((end - stepping).as_secs_f64());
        }
    }
    let mut line = serde_json::json!({
        "bench": "step",
        "implementation": "elfin",
        "arch": cli.arch,
        "device": "cpu",
        "precision": if cli.optim.bf16 { "bf16" } else { "fp32" },
        "threads": tch::get_num_threads(),
        "batch": BATCH, "image": IMAGE, "src_len": SRC_LEN, "tgt_len": TGT_LEN, "vocab": VOCAB,
        "warmup_steps": WARMUP, "timed_steps": TIMED,
        "adam": cli.adam,
        "median_s": median(&steps),
        "min_s": steps.iter().copied().fold(f64::INFINITY, f64::min),
        "max_s": steps.iter().copied().fold(0.0, f64::max),
        "phases_median_s": {
            "forward_loss_backward": median(&fwd_bwd),
            "clip": median(&clip),
            "optimizer": median(&optimizer),
        },
    });
    if cli.compare_adam {
        // Gradients of one more backward pass, kept for all the steps below.
        let logits = precision.run(device, || model.forward_t(&input, true));
        let out = criterion.compute(&logits, &target, None, None, 0).expect("loss");
        backward_with_grad(&logits, &out.grad_logits).expect("backward");
        let (mut fused, mut tensor_ops) = (vec![], vec![]);
        for _ in 0..TIMED {
            for (k, times) in [(AdamKernel::Fused, &mut fused), (AdamKernel::TensorOps, &mut tensor_ops)] {
                adam.set_kernel(k);
                let start = Instant::now();
                adam.step(&params, cli.optim.lr).expect("Adam step");
                times.push(start.elapsed().as_secs_f64());
            }
        }
        line["adam_compare"] = serde_json::json!({
            "fused_median_s": median(&fused),
            "tensor_ops_median_s": median(&tensor_ops),
            "speedup": median(&tensor_ops) / median(&fused),
        });
    }
    println!("{line}");
}
