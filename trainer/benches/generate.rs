//! Beam search with incremental decoding (a key/value cache per layer)
//! against recomputing the decoder over the whole prefix at every step, in
//! one run, on the same inputs: same hypotheses, time ratio, and validation
//! throughput in images per second. CPU, random weights.
//!
//!     cargo bench -p elfin-trainer --bench generate [-- --arch ofa_tiny --batch 4 --image 256]

use elfin_trainer::generate::{beam_search, BeamSearchConfig, OfaStepModel};
use elfin_trainer::model::{NetInput, OfaConfig, OfaModel, Precision};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn value(args: &[String], flag: &str, default: &str) -> String {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arch = value(&args, "--arch", "ofa_tiny");
    let batch: i64 = value(&args, "--batch", "4").parse().expect("--batch");
    let image: i64 = value(&args, "--image", "256").parse().expect("--image");
    let vocab = 59457;
    tch::manual_seed(1);
    let mut cfg = OfaConfig::finetuning(&arch).expect("arch");
    cfg.patch_image_size = image;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = OfaModel::new(&vs.root(), &cfg, vocab);
    let input = NetInput {
        src_tokens: Tensor::randint_low(4, 50000, [batch, 8], (Kind::Int64, Device::Cpu)),
        src_lengths: Tensor::full([batch], 8, (Kind::Int64, Device::Cpu)),
        patch_images: Tensor::rand([batch, 3, image, image], (Kind::Float, Device::Cpu)) * 2.0 - 1.0,
        patch_masks: Tensor::ones([batch], (Kind::Bool, Device::Cpu)),
        prev_output_tokens: Tensor::zeros([batch, 1], (Kind::Int64, Device::Cpu)),
    };
    // 16 generated tokens, then eos, at beam 5 (the caption preset's generator, held to 16 tokens).
    let search = BeamSearchConfig {
        beam: 5,
        max_len_a: 0.0,
        max_len_b: 16,
        min_len: 16,
        no_repeat_ngram_size: 3,
        lenpen: 1.0,
        temperature: 1.0,
        unk_penalty: 0.0,
        constraint_range: None,
        bos: 0,
        pad: 1,
        eos: 2,
        unk: 3,
    };
    let run = |incremental: bool| {
        let start = Instant::now();
        let hyps = tch::no_grad(|| {
            let mut step = OfaStepModel::new(&model, &input, search.beam, incremental, Precision::Fp32, Device::Cpu);
            beam_search(&mut step, batch as usize, 8, vocab, &search).expect("beam search")
        });
        (start.elapsed().as_secs_f64(), hyps)
    };
    run(true); // warm-up
    let (t_inc, h_inc) = run(true);
    let (t_full, h_full) = run(false);
    // The encoder runs once per batch in both modes; time it alone to show the decoding part.
    let start = Instant::now();
    tch::no_grad(|| OfaStepModel::new(&model, &input, search.beam, true, Precision::Fp32, Device::Cpu));
    let t_enc = start.elapsed().as_secs_f64();
    let same = h_inc.iter().zip(&h_full).all(|(a, b)| a[0].tokens == b[0].tokens);
    println!("{arch}, {image}px, batch {batch}, beam 5, 16 tokens, {} threads", tch::get_num_threads());
    println!(
        "result: incremental {t_inc:.3} s, full prefix {t_full:.3} s, speed-up {:.2}x, same best hypotheses: {same}",
        t_full / t_inc
    );
    println!(
        "result: without the shared encoder ({t_enc:.3} s): incremental {:.3} s, full prefix {:.3} s, speed-up {:.2}x",
        t_inc - t_enc,
        t_full - t_enc,
        (t_full - t_enc) / (t_inc - t_enc)
    );
    println!("result: validation generation throughput {:.2} images/s (incremental)", batch as f64 / t_inc);
    assert!(same, "incremental and full decoding chose different hypotheses");
}
