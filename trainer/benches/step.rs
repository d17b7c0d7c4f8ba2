//! The reference's measured training step, for side-by-side comparison with
//! other implementations: forward + encouraging loss + backward + clipping +
//! Adam, `ofa_tiny`, batch 8, 256×256 images, 20 source + 20 target tokens,
//! the full 59 457-symbol vocabulary, dropout 0.1, drop path 0.1, label
//! smoothing 0.1, log_end 0.75, lr 1e-5, clip norm 1.0, weight decay 0.01;
//! 2 warm-up steps, then 5 timed ones. Prints one JSON line: `median_s`,
//! `min_s`, `max_s` of the step times and the median of each phase
//! (forward + loss + backward, of which the loss alone; clip; optimizer).
//!
//!     cargo bench -p elfin-trainer --bench step -- [--threads N] [--bf16] [--arch A --image S]
//!         [--adam fused|tensor-ops] [--compare adam,bf16,channels-last]
//!
//! `--bf16`: the forward under bfloat16 autocast (on the CPU, or on CUDA
//! device 0 with `--cuda`, as `scripts/gpu-check.sh` runs it). `--adam
//! tensor-ops` steps with the reference's per-tensor libtorch ops instead of
//! the fused kernel. `--compare X[,Y]` adds 5 more rounds after the timed steps,
//! each timing both variants of X back to back on the same model (Adam
//! kernels: the optimiser step alone; fp32 against bf16, or images in the
//! default against the channels-last memory format: whole steps), and
//! reports their medians and ratio: on a busy machine, the figure to trust.

use clap::Parser;
use elfin_trainer::criterion::{backward_with_grad, Criterion, CriterionArgs};
use elfin_trainer::dist::{trainable_named, GradSync, ProcessGroup};
use elfin_trainer::model::resnet::ImageLayout;
use elfin_trainer::model::{NetInput, OfaConfig, OfaModel, Precision};
use elfin_trainer::optim::{clip_grad_norm, Adam, AdamKernel, ClipRule, GradUse, OptimArgs};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

const BATCH: i64 = 8;
const SRC_LEN: i64 = 20;
const TGT_LEN: i64 = 20;
const VOCAB: i64 = 59457;
const WARMUP: usize = 2;
const TIMED: usize = 5;
const PAD: i64 = 1;
const EOS: i64 = 2;

#[derive(Parser)]
struct Cli {
    /// libtorch intra-op threads (default: libtorch's own choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Run on CUDA device 0 (scripts/gpu-check.sh) instead of the CPU.
    #[arg(long)]
    cuda: bool,
    #[arg(long, default_value = "fused")]
    adam: String,
    /// Time two variants alternately: adam, bf16 or channels-last (comma-separated for several).
    #[arg(long, value_delimiter = ',')]
    compare: Vec<String>,
    #[arg(long, default_value = "ofa_tiny")]
    arch: String,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    image: i64,
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

/// Seconds of one step's phases.
struct Phases {
    forward_loss_backward: f64,
    loss: f64,
    clip: f64,
    optimizer: f64,
}

impl Phases {
    fn total(&self) -> f64 {
        self.forward_loss_backward + self.clip + self.optimizer
    }
}

struct Bench {
    cli: Cli,
    model: OfaModel,
    input: NetInput,
    target: Tensor,
    criterion: Criterion,
    params: Vec<(String, Tensor)>,
    pg: ProcessGroup,
    sync: GradSync,
    adam: Adam,
    update: i64,
    device: Device,
    _vs: nn::VarStore,
}

impl Bench {
    fn new(cli: Cli) -> Bench {
        let device = if cli.cuda { Device::Cuda(0) } else { Device::Cpu };
        tch::manual_seed(1);
        let mut cfg = OfaConfig::finetuning(&cli.arch).expect("--arch");
        cfg.dropout = 0.1;
        cfg.encoder_drop_path_rate = 0.1;
        cfg.decoder_drop_path_rate = 0.1;
        cfg.patch_image_size = cli.image;
        let vs = nn::VarStore::new(device);
        let model = OfaModel::new(&vs.root(), &cfg, VOCAB);
        let input = NetInput {
            src_tokens: Tensor::randint_low(4, VOCAB, [BATCH, SRC_LEN], (Kind::Int64, device)),
            src_lengths: Tensor::full([BATCH], SRC_LEN, (Kind::Int64, device)),
            patch_images: Tensor::rand([BATCH, 3, cli.image, cli.image], (Kind::Float, device)) * 2 - 1,
            patch_masks: Tensor::ones([BATCH], (Kind::Bool, device)),
            prev_output_tokens: Tensor::randint_low(4, VOCAB, [BATCH, TGT_LEN], (Kind::Int64, device)),
        };
        let target = Tensor::randint_low(4, VOCAB, [BATCH, TGT_LEN], (Kind::Int64, device));
        let criterion = Criterion::new(&cli.criterion, PAD, EOS).expect("criterion flags");
        let params = trainable_named(&vs);
        let sync = GradSync::new(params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), 25 << 20)
            .expect("gradient buckets");
        let mut adam = Adam::new(&cli.optim);
        adam.set_kernel(kernel(&cli.adam));
        Bench {
            cli,
            model,
            input,
            target,
            criterion,
            params,
            pg: ProcessGroup::single(),
            sync,
            adam,
            update: 0,
            device,
            _vs: vs,
        }
    }

    /// Forward, loss and backward, leaving the summed gradients in the buckets.
    fn forward_backward(&mut self, precision: Precision) -> (f64, u64) {
        let logits = precision.run(self.device, || self.model.forward_t(&self.input, true));
        let start = self.now();
        let out = self.criterion.compute(&logits, &self.target, None, None, self.update).expect("loss");
        let loss = (self.now() - start).as_secs_f64();
        backward_with_grad(&logits, &out.grad_logits).expect("backward");
        self.sync.sync_sum(&self.pg).expect("gradient sync");
        self.update += 1;
        (loss, out.sample_size as u64)
    }

    /// Now, after the device finished the work queued so far.
    fn now(&self) -> Instant {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        Instant::now()
    }

    fn step(&mut self, precision: Precision) -> Phases {
        let start = self.now();
        let (loss, sample_size) = self.forward_backward(precision);
        let clipping = self.now();
        let multiplier = 1.0 / (sample_size as f64).max(1.0);
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).collect();
        let clip = clip_grad_norm(&grads, self.cli.optim.clip_norm, multiplier, ClipRule::WithEpsilon);
        let stepping = self.now();
        let uses = GradUse { factor: clip.factor, zero_after: true };
        self.adam.step(&self.params, self.cli.optim.lr, uses).expect("Adam step");
        let end = self.now();
        Phases {
            forward_loss_backward: (clipping - start).as_secs_f64(),
            loss,
            clip: (stepping - clipping).as_secs_f64(),
            optimizer: (end - stepping).as_secs_f64(),
        }
    }

    /// Seconds of variant `b` (the second) of `what`, then of `a`, per round.
    fn compare(&mut self, what: &str, precision: Precision) -> serde_json::Value {
        let (mut first, mut second) = (vec![], vec![]);
        let names: [&str; 2] = match what {
            "adam" => {
                // Gradients of one more backward pass, kept for all the steps below.
                self.forward_backward(precision);
                ["fused", "tensor_ops"]
            }
            "bf16" => ["fp32", "bf16"],
            "channels-last" => ["contiguous", "channels_last"],
            other => panic!("--compare takes adam, bf16 or channels-last, not {other}"),
        };
        for _ in 0..TIMED {
            for (variant, times) in [(0, &mut first), (1, &mut second)] {
                let seconds = match what {
                    "adam" => {
                        self.adam.set_kernel([AdamKernel::Fused, AdamKernel::TensorOps][variant]);
                        let start = self.now();
                        self.adam.step(&self.params, self.cli.optim.lr, GradUse::AS_IS).expect("Adam step");
                        (self.now() - start).as_secs_f64()
                    }
                    "bf16" => self.step([Precision::Fp32, Precision::Bf16][variant]).total(),
                    _ => {
                        self.model.set_image_layout([ImageLayout::AsGiven, ImageLayout::ChannelsLast][variant]);
                        self.step(precision).total()
                    }
                };
                times.push(seconds);
            }
        }
        self.model.set_image_layout(ImageLayout::Auto);
        serde_json::json!({
            "what": what,
            format!("{}_median_s", names[0]): median(&first),
            format!("{}_median_s", names[1]): median(&second),
            format!("{}_over_{}", names[1], names[0]): median(&second) / median(&first),
        })
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
    let precision = if cli.optim.bf16 { Precision::Bf16 } else { Precision::Fp32 };
    let compare = cli.compare.clone();
    let mut bench = Bench::new(cli);
    let mut phases = Vec::new();
    for i in 0..WARMUP + TIMED {
        let p = bench.step(precision);
        if i >= WARMUP {
            phases.push(p);
        }
    }
    let of = |f: fn(&Phases) -> f64| median(&phases.iter().map(f).collect::<Vec<_>>());
    let steps: Vec<f64> = phases.iter().map(Phases::total).collect();
    let cli = &bench.cli;
    let mut line = serde_json::json!({
        "bench": "step",
        "implementation": "elfin",
        "arch": cli.arch,
        "device": if cli.cuda { "cuda" } else { "cpu" },
        "precision": if cli.optim.bf16 { "bf16" } else { "fp32" },
        "threads": tch::get_num_threads(),
        "batch": BATCH, "image": cli.image, "src_len": SRC_LEN, "tgt_len": TGT_LEN, "vocab": VOCAB,
        "warmup_steps": WARMUP, "timed_steps": TIMED,
        "adam": cli.adam,
        "median_s": median(&steps),
        "min_s": steps.iter().copied().fold(f64::INFINITY, f64::min),
        "max_s": steps.iter().copied().fold(0.0, f64::max),
        "phases_median_s": {
            "forward_loss_backward": of(|p| p.forward_loss_backward),
            "of_which_loss": of(|p| p.loss),
            "clip": of(|p| p.clip),
            "optimizer": of(|p| p.optimizer),
        },
    });
    if !compare.is_empty() {
        line["compare"] = compare.iter().map(|what| bench.compare(what, precision)).collect();
    }
    println!("{line}");
}
