//! Which checkpoint a run starts from, and which files a save writes.
//! The decisions are pure functions of the flags and the directory listing,
//! so they are tested without training anything.

use super::{copy_atomically, save_checkpoint, CheckpointArgs, CheckpointState};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const LAST: &str = "checkpoint_last.safetensors";
pub const BEST: &str = "checkpoint_best.safetensors";

/// What a starting run loads.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadPlan {
    /// Nothing to load: random initialisation.
    Fresh,
    /// The save dir's own `checkpoint_last`: everything is restored and the
    /// `--reset-*` flags are ignored, since they describe how to start from
    /// `--restore-file`, not how to continue an interrupted run.
    Resume { path: PathBuf },
    /// `--restore-file`, with the `--reset-*` flags applied.
    Restore { path: PathBuf, reset_optimizer: bool, reset_dataloader: bool, reset_meters: bool },
}

/// Decides what to load. `checkpoint_last` in the save dir wins over
/// `--restore-file`, so relaunching a run (after a crash or preemption)
/// continues it instead of starting again from the pretrained weights.
/// A `--restore-file` that was given but does not exist is an error.
pub fn plan_load(args: &CheckpointArgs, exists: impl Fn(&Path) -> bool) -> Result<LoadPlan> {
    let last = args.save_dir.join(LAST);
    if exists(&last) {
        return Ok(LoadPlan::Resume { path: last });
    }
    if args.restore_file.as_os_str() == LAST || args.restore_file == last {
        return Ok(LoadPlan::Fresh);
    }
    if !exists(&args.restore_file) {
        bail!(
            "--restore-file {} does not exist (and {} has no {LAST} to resume from); \
             check the path, or leave --restore-file out to start from random weights",
            args.restore_file.display(),
            args.save_dir.display()
        );
    }
    Ok(LoadPlan::Restore {
        path: args.restore_file.clone(),
        reset_optimizer: args.reset_optimizer,
        reset_dataloader: args.reset_dataloader,
        reset_meters: args.reset_meters,
    })
}

impl LoadPlan {
    pub fn path(&self) -> Option<&Path> {
        match self {
            LoadPlan::Fresh => None,
            LoadPlan::Resume { path } | LoadPlan::Restore { path, .. } => Some(path),
        }
    }

    /// The line the run prints about where it starts from.
    pub fn describe(&self) -> String {
        match self {
            LoadPlan::Fresh => "no checkpoint to load: starting from random weights".to_string(),
            LoadPlan::Resume { path } => format!(
                "resuming from {} (model, optimiser, loss scale, progress and best metric; --restore-file and --reset-* ignored)",
                path.display()
            ),
            LoadPlan::Restore { path, reset_optimizer, reset_dataloader, reset_meters } => {
                let mut reset = Vec::new();
                for (on, what) in [(reset_optimizer, "optimizer"), (reset_dataloader, "dataloader"), (reset_meters, "meters")] {
                    if *on {
                        reset.push(what);
                    }
                }
                let reset = if reset.is_empty() { String::new() } else { format!(" (reset: {})", reset.join(", ")) };
                format!("restoring from {}{reset}", path.display())
            }
        }
    }

    /// Drops from a loaded checkpoint what the `--reset-*` flags say not to restore.
    pub fn apply(&self, mut state: CheckpointState) -> CheckpointState {
        if let LoadPlan::Restore { reset_optimizer, reset_dataloader, reset_meters, .. } = *self {
            if reset_optimizer {
                state.optimizer = None;
                state.loss_scaler = None;
                state.progress.num_updates = 0;
            }
            if reset_dataloader {
                state.progress.epoch = 1;
                state.progress.iterations_in_epoch = 0;
                state.progress.end_of_epoch = false;
            }
            if reset_meters {
                state.progress.best = None;
                state.progress.metric = None;
                state.progress.previous_training_time = 0.0;
            }
        }
        state
    }
}

/// Whether this point of training is a save point (`--save-interval`,
/// `--save-interval-updates`). A run that was asked to stop saves regardless.
pub fn should_save(args: &CheckpointArgs, epoch: u64, num_updates: u64, end_of_epoch: bool) -> bool {
    let epoch_save = end_of_epoch && args.save_interval > 0 && epoch.is_multiple_of(args.save_interval);
    let update_save =
        args.save_interval_updates > 0 && num_updates > 0 && num_updates.is_multiple_of(args.save_interval_updates);
    epoch_save || update_save
}

/// The files of one save: `names[0]` is written, the rest are copies of it.
#[derive(Clone, Debug, PartialEq)]
pub struct SavePlan {
    pub names: Vec<String>,
    /// Best metric after this save.
    pub best: Option<f64>,
    /// `checkpoint.best_*` files that fall out of `--keep-best-checkpoints`.
    pub remove: Vec<String>,
}

fn is_better(args: &CheckpointArgs, a: f64, b: f64) -> bool {
    if args.maximize_best_checkpoint_metric {
        a >= b
    } else {
        a <= b
    }
}

fn best_k_name(args: &CheckpointArgs, value: f64) -> String {
    format!("checkpoint.best_{}_{value:.4}.safetensors", args.best_checkpoint_metric)
}

/// The value in a `checkpoint.best_<metric>_<value>.safetensors` name of this run's metric.
fn best_k_value(args: &CheckpointArgs, name: &str) -> Option<f64> {
    let prefix = format!("checkpoint.best_{}_", args.best_checkpoint_metric);
    name.strip_prefix(&prefix)?.strip_suffix(".safetensors")?.parse().ok()
}

/// Names written at a save point. `kept_best` lists the existing
/// `checkpoint.best_*` files (see [`CheckpointSaver`]). `checkpoint_best`
/// is written when `metric` is at least as good as the best so far (ties
/// overwrite, as in the reference); `checkpoint_last` always.
pub fn plan_save(
    args: &CheckpointArgs,
    epoch: u64,
    num_updates: u64,
    end_of_epoch: bool,
    metric: Option<f64>,
    best_before: Option<f64>,
    kept_best: &[String],
) -> SavePlan {
    let mut names = vec![super::LAST.to_string()];
    if end_of_epoch && !args.no_epoch_checkpoints && args.save_interval > 0 && epoch.is_multiple_of(args.save_interval)
    {
        names.push(format!("checkpoint{epoch}.safetensors"));
    }
    if !end_of_epoch && args.save_interval_updates > 0 && num_updates.is_multiple_of(args.save_interval_updates) {
        names.push(format!("checkpoint_{epoch}_{num_updates}.safetensors"));
    }
    let mut best = best_before;
    let mut remove = Vec::new();
    if let Some(value) = metric {
        if best_before.is_none_or(|b| is_better(args, value, b)) {
            names.push(super::BEST.to_string());
            best = Some(value);
        }
        let keep = usize::try_from(args.keep_best_checkpoints).unwrap_or(0);
        if keep > 0 {
            let mut kept: Vec<(f64, String)> =
                kept_best.iter().filter_map(|n| Some((best_k_value(args, n)?, n.clone()))).collect();
            // Best first.
            kept.sort_by(|a, b| {
                let ascending = a.0.total_cmp(&b.0);
                if args.maximize_best_checkpoint_metric {
                    ascending.reverse()
                } else {
                    ascending
                }
            });
            let admitted = kept.len() < keep || kept.last().is_some_and(|w| is_better(args, value, w.0));
            if admitted {
                let name = best_k_name(args, value);
                kept.retain(|(_, n)| *n != name);
                let at = kept.iter().position(|(v, _)| !is_better(args, *v, value)).unwrap_or(kept.len());
                kept.insert(at, (value, name.clone()));
                names.push(name);
                remove = kept.split_off(keep.min(kept.len())).into_iter().map(|(_, n)| n).collect();
            }
        }
    }
    SavePlan { names, best, remove }
}

/// Writes checkpoints at save points and remembers the best metric.
pub struct CheckpointSaver {
    args: CheckpointArgs,
    best: Option<f64>,
}

impl CheckpointSaver {
    /// `best`: the best metric restored from the checkpoint the run started from.
    pub fn new(args: CheckpointArgs, best: Option<f64>) -> Self {
        CheckpointSaver { args, best }
    }

    pub fn best(&self) -> Option<f64> {
        self.best
    }

    /// Saves `state` under every name the plan gives (only rank 0 calls
    /// this), records the new best in `state.progress`, and returns the
    /// files written. `metric` is the validation value, already rounded as logged.
    pub fn save(&mut self, state: &mut CheckpointState, metric: Option<f64>) -> Result<Vec<PathBuf>> {
        let dir = &self.args.save_dir;
        let kept_best = self.list_best_k()?;
        let p = &state.progress;
        let plan = plan_save(&self.args, p.epoch, p.num_updates, p.end_of_epoch, metric, self.best, &kept_best);
        state.progress.best = plan.best;
        state.progress.metric = metric;
        let paths: Vec<PathBuf> = plan.names.iter().map(|n| dir.join(n)).collect();
        save_checkpoint(&paths[0], state)?;
        for copy in &paths[1..] {
            copy_atomically(&paths[0], copy)?;
        }
        for name in &plan.remove {
            let path = dir.join(name);
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove old best checkpoint {}", path.display()))?;
        }
        self.best = plan.best;
        Ok(paths)
    }

    fn list_best_k(&self) -> Result<Vec<String>> {
        let dir = &self.args.save_dir;
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list save dir {}", dir.display()))?;
        Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| best_k_value(&self.args, n).is_some())
            .collect())
    }
}
