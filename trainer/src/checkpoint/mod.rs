//! Checkpoints: what they hold, how they are written (`file`), and when and
//! under which names they are saved and which one a run starts from
//! (`policy`). Spec `ofa-finetuning.md` §6.9–§6.10; user documentation in
//! `docs/training.md`.

mod file;
pub mod policy;

pub use file::{copy_atomically, is_elfin_checkpoint, load_checkpoint, save_checkpoint, write_atomically};
pub use policy::{plan_load, should_save, CheckpointSaver, LoadPlan, BEST, LAST};

use crate::optim::{AdamState, LossScalerState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::Tensor;

/// Header `format` value; a reader refuses other formats rather than guess.
pub const FORMAT: &str = "elfin-checkpoint-1";

/// Everything a run needs to continue where it stopped.
pub struct CheckpointState {
    /// Model parameters and buffers by name, in the dtype they have in the model (stored as `model.<name>`).
    pub model: Vec<(String, Tensor)>,
    /// Adam step and moments; `None` in a weights-only file.
    pub optimizer: Option<AdamState>,
    /// fp16 loss scaler; `None` without `--fp16`.
    pub loss_scaler: Option<LossScalerState>,
    pub progress: Progress,
    pub rng: RngState,
    /// The run's full resolved configuration (all flags), for the record and for checks on resume.
    pub config: serde_json::Value,
}

/// Where training stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 1-based epoch the checkpoint was taken in.
    pub epoch: u64,
    /// Completed (non-skipped) updates.
    pub num_updates: u64,
    /// Update chunks of `epoch` already consumed (overflowed ones included).
    pub iterations_in_epoch: u64,
    /// Whether `epoch` was finished: a resumed run then starts the next epoch.
    pub end_of_epoch: bool,
    /// Best `--best-checkpoint-metric` value so far (rounded as logged).
    pub best: Option<f64>,
    /// The metric of the validation that triggered this save, if any.
    pub metric: Option<f64>,
    /// Seconds spent training before this checkpoint, over all previous launches.
    pub previous_training_time: f64,
}

impl Progress {
    /// The (epoch, chunks to skip) a resumed run continues from.
    pub fn resume_position(&self) -> (u64, u64) {
        if self.end_of_epoch {
            (self.epoch + 1, 0)
        } else {
            (self.epoch.max(1), self.iterations_in_epoch)
        }
    }
}

/// Random state. Training re-seeds torch with `seed + num_updates` before
/// every update and the batch order is a function of `(seed, epoch)`, so the
/// seed and the loop's counters determine every random draw after a resume;
/// `counters` holds any further named counters the loop draws from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    pub counters: BTreeMap<String, u64>,
}

/// Checkpoint flags, named as in fairseq/OFA.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointArgs {
    /// Directory for checkpoints and metrics.jsonl. A run started again with the same
    /// directory resumes from its checkpoint_last.safetensors.
    #[arg(long, default_value = "checkpoints")]
    pub save_dir: PathBuf,
    /// Checkpoint to start from when the save dir has no checkpoint_last (e.g. converted
    /// pretrained weights). The default name means "checkpoint_last in --save-dir".
    #[arg(long, default_value = LAST)]
    pub restore_file: PathBuf,
    /// With --restore-file: do not load the optimiser, loss scaler or LR-schedule state; start at update 0.
    #[arg(long)]
    pub reset_optimizer: bool,
    /// With --restore-file: start at epoch 1, iteration 0.
    #[arg(long)]
    pub reset_dataloader: bool,
    /// With --restore-file: do not restore the best metric or the training time.
    #[arg(long)]
    pub reset_meters: bool,
    /// With --restore-file: do not restore the LR-schedule state.
    #[arg(long)]
    pub reset_lr_scheduler: bool,
    /// Save at the end of every N epochs.
    #[arg(long, default_value_t = 1)]
    pub save_interval: u64,
    /// Also save every N updates within an epoch (0 = never), as checkpoint_EPOCH_UPDATES.safetensors.
    #[arg(long, default_value_t = 0)]
    pub save_interval_updates: u64,
    /// Do not write checkpointEPOCH.safetensors at the end of epochs.
    #[arg(long)]
    pub no_epoch_checkpoints: bool,
    /// Keep this many checkpoint.best_METRIC_VALUE.safetensors files (≤ 0: none).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub keep_best_checkpoints: i64,
    /// Validation metric that selects checkpoint_best (e.g. cider, score, loss).
    #[arg(long, default_value = "loss")]
    pub best_checkpoint_metric: String,
    /// Higher --best-checkpoint-metric is better (default: lower is better).
    #[arg(long)]
    pub maximize_best_checkpoint_metric: bool,
}
