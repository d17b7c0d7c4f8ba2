//! The `elfin-train train` command line: every option the reference's run
//! scripts pass, under the reference's names, grouped by the module that uses it.

use crate::checkpoint::CheckpointArgs;
use crate::criterion::CriterionArgs;
use crate::data::DataArgs;
use crate::dist::DistArgs;
use crate::eval::EvalArgs;
use crate::model::{ModelArgs, Precision};
use crate::optim::OptimArgs;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Device;

#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub criterion: CriterionArgs,
    #[command(flatten)]
    pub optim: OptimArgs,
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    #[command(flatten)]
    pub eval: EvalArgs,
    #[command(flatten)]
    pub dist: DistArgs,
    #[command(flatten)]
    pub run: LoopArgs,
    #[command(flatten)]
    pub compat: CompatArgs,
}

/// How long to train, on what, and how often to log.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
#[command(next_help_heading = "Training loop")]
pub struct LoopArgs {
    /// Sentences per micro-batch on each rank.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Micro-batches accumulated per update on each rank.
    #[arg(long, default_value_t = 1)]
    pub update_freq: usize,
    /// Stop after this many epochs.
    #[arg(long, default_value_t = 1)]
    pub max_epoch: u64,
    /// Stop after this many updates (0 = no limit). When set, the LR schedule
    /// ends here too if that comes before the end of --max-epoch.
    #[arg(long, default_value_t = 0)]
    pub max_update: u64,
    /// Seed of the batch order and of every update's random draws (dropout, drop path).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Log the training meters every N updates.
    #[arg(long, default_value_t = 100)]
    pub log_interval: u64,
    /// Where this rank runs: cpu, or cuda (the GPU of the local rank). Default: cuda when usable.
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    /// Check the flags, the BPE folder, the data files and the checkpoint and
    /// save paths, print what was checked, and exit without training
    /// (`elfin launch` runs this on every host before it starts the ranks).
    #[arg(long, value_enum, value_name = "WHAT", num_args = 0..=1, default_missing_value = "all")]
    #[serde(skip)]
    pub check_only: Option<super::preflight::CheckScope>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// Options of the reference scripts that elfin accepts so that every line of
/// a preset parses, but does not need.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
#[command(next_help_heading = "Accepted for compatibility with OFA's scripts (no effect)")]
pub struct CompatArgs {
    /// The criterion; elfin implements adjust_label_smoothed_encouraging_loss only.
    #[arg(long, default_value = "adjust_label_smoothed_encouraging_loss")]
    pub criterion: String,
    /// fairseq's plug-in directory (OFA's ofa_module); elfin has it built in.
    #[arg(long)]
    pub user_dir: Option<String>,
    /// fairseq's log format; elfin prints the `simple` format, or a progress bar on a terminal.
    #[arg(long)]
    pub log_format: Option<String>,
}

impl TrainArgs {
    /// Checks what clap cannot: combinations and values across groups.
    pub fn validate(&self) -> Result<()> {
        if self.compat.criterion != "adjust_label_smoothed_encouraging_loss" {
            bail!(
                "--criterion {}: elfin implements adjust_label_smoothed_encouraging_loss only \
                 (label smoothing alone is --log-end with no bonus: not supported)",
                self.compat.criterion
            );
        }
        if self.run.batch_size == 0 || self.run.update_freq == 0 {
            bail!("--batch-size and --update-freq must be at least 1");
        }
        if self.eval.eval_cider && self.eval.eval_acc {
            bail!("--eval-cider and --eval-acc are for different tasks; give one");
        }
        Ok(())
    }

    /// The device of a rank whose local GPU (if any) is `local_gpu`.
    pub fn device(&self, local_gpu: Option<usize>) -> Result<Device> {
        match (self.run.device, local_gpu) {
            (Some(DeviceKind::Cpu), _) | (None, None) => Ok(Device::Cpu),
            (_, Some(gpu)) => Ok(Device::Cuda(gpu)),
            (Some(DeviceKind::Cuda), None) => {
                bail!(
                    "--device cuda, but no CUDA device is usable here (see `elfin-train --version`); use --device cpu"
                )
            }
        }
    }

    /// The autocast precision `--fp16` / `--bf16` ask for; on the CPU
    /// `--fp16` falls back to fp32 (the presets pass --fp16 and the CPU demo
    /// overrides it) and `--bf16` is CPU bf16 autocast.
    pub fn precision(&self, device: Device) -> Precision {
        match (device.is_cuda(), self.optim.fp16, self.optim.bf16) {
            (true, true, _) => Precision::Fp16,
            (_, _, true) => Precision::Bf16,
            _ => Precision::Fp32,
        }
    }
}
