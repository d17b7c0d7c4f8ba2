//! Forward + backward time of the OFA model at batch 8 (a plain main; run
//! with `cargo bench -p elfin-trainer --bench model`).
//!
//! CPU (default): `ofa_micro` with 64×64 images and `ofa_tiny` with 256×256.
//! `--gpu` (or `ELFIN_BENCH_DEVICE=cuda`): `ofa_large` with 480×480 images under fp16 and bf16 autocast on
//! CUDA device 0, with model FLOPs utilisation against `--peak-tflops`.
//! Every run: 20 source and 20 target tokens per row, the full 59457-symbol
//! vocabulary, dropout 0.1 and drop path 0.1 as the finetuning scripts use.
//! `--arch NAME` runs one case, `--iters N` sets the timed steps (median).

use elfin_trainer::model::{NetInput, OfaConfig, OfaModel, Precision};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

const BATCH: i64 = 8;
const SRC_LEN: i64 = 20;
const TGT_LEN: i64 = 20;
const VOCAB: i64 = 59457;

struct Case {
    arch: &'static str,
    image: i64,
    precision: Precision,
}

fn input(image: i64, device: Device) -> NetInput {
    let src = Tensor::randint_low(4, VOCAB, [BATCH, SRC_LEN], (Kind::Int64, device));
    NetInput {
        src_lengths: Tensor::full([BATCH], SRC_LEN, (Kind::Int64, device)),
        src_tokens: src,
        patch_images: Tensor::rand([BATCH, 3, image, image], (Kind::Float, device)) * 2 - 1,
        patch_masks: Tensor::ones([BATCH], (Kind::Bool, device)),
        prev_output_tokens: Tensor::randint_low(4, VOCAB, [BATCH, TGT_LEN], (Kind::Int64, device)),
    }
}

/// Multiply-add FLOPs ×2 of one forward pass: convolutions, linears, attention
/// scores and mixes, position biases and the output projection.
fn forward_flops(cfg: &OfaConfig, image: i64) -> f64 {
    let (c, f, b) = (cfg.embed_dim as f64, cfg.ffn_embed_dim as f64, BATCH as f64);
    let mut side = image / 2; // stem conv, stride 2
    let mut conv = (side * side * 64 * 3 * 49) as f64;
    side = (side + 1) / 2; // max pool
    let mut c_in = 64;
    for (s, (&blocks, planes)) in cfg.resnet_layers.iter().zip([64i64, 128, 256]).enumerate() {
        for j in 0..blocks {
            let stride = if j == 0 && s > 0 { 2 } else { 1 };
            let out = side / stride;
            conv += (side * side * planes * c_in) as f64; // conv1 at the input resolution
            conv += (out * out * planes * planes * 9) as f64;
            conv += (out * out * planes * 4 * planes) as f64;
            if j == 0 {
                conv += (out * out * planes * 4 * c_in) as f64;
            }
            side = out;
            c_in = 4 * planes;
        }
    }
    let patches = (side * side) as f64;
    let te = patches + SRC_LEN as f64;
    let td = TGT_LEN as f64;
    let enc_layer = te * (4.0 * c * c + 2.0 * c * f) + 2.0 * te * te * c;
    let dec_layer =
        td * (4.0 * c * c + 2.0 * c * c + 2.0 * c * f) + te * 2.0 * c * c + 2.0 * td * td * c + 2.0 * td * te * c;
    let biases = (te + 2.0 * td) * 2.0 * c * c + te * 2.0 * c * c + (te * te + td * td + td * te) * c;
    let macs = conv
        + patches * 1024.0 * c
        + cfg.encoder_layers as f64 * enc_layer
        + cfg.decoder_layers as f64 * dec_layer
        + biases
        + td * c * VOCAB as f64;
    2.0 * b * macs
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median and fastest seconds of a forward + backward step.
fn time_step(case: &Case, device: Device, iters: usize) -> (OfaConfig, f64, f64) {
    let mut cfg = OfaConfig::finetuning(case.arch).unwrap();
    cfg.dropout = 0.1;
    cfg.encoder_drop_path_rate = 0.1;
    cfg.decoder_drop_path_rate = 0.1;
    cfg.patch_image_size = case.image;
    let vs = nn::VarStore::new(device);
    let model = OfaModel::new(&vs.root(), &cfg, VOCAB);
    let batch = input(case.image, device);
    let target = Tensor::randint_low(4, VOCAB, [BATCH, TGT_LEN, 1], (Kind::Int64, device));
    let params = vs.trainable_variables();
    let mut times = Vec::new();
    for i in 0..iters + 2 {
        sync(device);
        let start = Instant::now();
        let loss = case.precision.run(device, || {
            let logits = model.forward_t(&batch, true);
            -logits.log_softmax(-1, Kind::Float).gather(-1, &target, false).mean(Kind::Float)
        });
        loss.backward();
        sync(device);
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }
    times.sort_by(f64::total_cmp);
    (cfg, times[times.len() / 2], times[0])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gpu = args.iter().any(|a| a == "--gpu") || std::env::var("ELFIN_BENCH_DEVICE").is_ok_and(|d| d == "cuda");
    let value = |flag: &str| {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(|v| v.parse::<f64>().expect(flag))
    };
    let peak_tflops = value("--peak-tflops").unwrap_or(989.0);
    let (device, cases, iters) = if gpu {
        assert!(tch::Cuda::is_available(), "--gpu needs a CUDA device");
        let cases = vec![
            Case { arch: "ofa_large", image: 480, precision: Precision::Fp16 },
            Case { arch: "ofa_large", image: 480, precision: Precision::Bf16 },
        ];
        (Device::Cuda(0), cases, value("--iters").unwrap_or(10.0) as usize)
    } else {
        let cases = vec![
            Case { arch: "ofa_micro", image: 64, precision: Precision::Fp32 },
            Case { arch: "ofa_tiny", image: 256, precision: Precision::Fp32 },
        ];
        (Device::Cpu, cases, value("--iters").unwrap_or(5.0) as usize)
    };
    println!(
        "device {device:?}, {} threads, batch {BATCH}, {SRC_LEN} source + {TGT_LEN} target tokens, V = {VOCAB}",
        tch::get_num_threads()
    );
    let only = args.iter().position(|a| a == "--arch").and_then(|i| args.get(i + 1));
    for case in cases.iter().filter(|c| only.is_none_or(|a| a == c.arch)) {
        tch::manual_seed(1);
        let (cfg, secs, fastest) = time_step(case, device, iters);
        let flops = 3.0 * forward_flops(&cfg, case.image);
        let tokens = (BATCH * TGT_LEN) as f64 / secs;
        let mut line = format!(
            "result: {:<10} {:>3}px {:<5} step {:>8.1} ms (fastest {:>8.1})  {:>8.0} target tok/s  {:>7.1} GFLOP/step  {:>7.3} TFLOP/s",
            case.arch,
            case.image,
            format!("{:?}", case.precision).to_lowercase(),
            secs * 1e3,
            fastest * 1e3,
            tokens,
            flops / 1e9,
            flops / secs / 1e12
        );
        if gpu {
            line += &format!("  MFU {:.1}% of {peak_tflops} TFLOP/s", 100.0 * flops / secs / 1e12 / peak_tflops);
        }
        println!("{line}");
    }
}
