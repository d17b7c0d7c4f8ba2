//! `elfin-train train --check-only`: everything a run needs that can be
//! checked before any rank starts, so that `elfin launch` (and its
//! `--dry-run`) refuses a bad value or a missing file on every host within
//! seconds instead of after the ranks have started.

use super::{model_config, validate, TrainArgs};
use crate::checkpoint::{self, LoadPlan};
use crate::data::{Split, Task};
use anyhow::{bail, Context, Result};
use std::io::BufRead;
use std::path::Path;

/// What `--check-only` looks at.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckScope {
    /// The flags, the BPE folder, the data files and the checkpoints.
    All,
    /// All but the data files (the launcher makes a demo's synthetic data later).
    NoData,
}

/// Checks a training run's `args`; returns one line per thing checked, or the first problem.
pub fn check(args: &TrainArgs, scope: CheckScope) -> Result<Vec<String>> {
    let mut done = check_inputs(args, scope)?;
    let plan = checkpoint::plan_load(&args.checkpoint, |p| p.exists())?;
    if let LoadPlan::Resume { path } | LoadPlan::Restore { path, .. } = &plan {
        readable_checkpoint(path)?;
    }
    done.push(format!("checkpoint: {}", plan.describe()));
    writable_dir(&args.checkpoint.save_dir)?;
    done.push(format!("save dir: {} (writable)", args.checkpoint.save_dir.display()));
    Ok(done)
}

/// Checks an `elfin-train eval` of `checkpoint` (none: the untrained model).
pub fn check_eval(args: &TrainArgs, checkpoint: Option<&Path>, scope: CheckScope) -> Result<Vec<String>> {
    let mut done = check_inputs(args, scope)?;
    if let Some(path) = checkpoint {
        anyhow::ensure!(path.exists(), "--checkpoint {} does not exist", path.display());
        readable_checkpoint(path)?;
        done.push(format!("checkpoint: {}", path.display()));
    }
    Ok(done)
}

/// A checkpoint whose header reads (a `.pt` through its converted twin).
fn readable_checkpoint(path: &Path) -> Result<()> {
    let path =
        if path.extension().is_some_and(|e| e == "pt") { super::converted_twin(path)? } else { path.to_path_buf() };
    checkpoint::is_elfin_checkpoint(&path).map(|_| ())
}

/// What training and evaluation both read: flags, model, BPE, data files.
fn check_inputs(args: &TrainArgs, scope: CheckScope) -> Result<Vec<String>> {
    let mut done = Vec::new();
    args.validate()?;
    let cfg = model_config(args)?;
    done.push(format!("flags: parsed; model {}", cfg.arch));
    let task = Task::new(&args.data)?;
    done.push(format!("bpe: {} symbols", task.dictionary().len()));
    validate::beam_config(args, task.dictionary()).context("--eval-args / --constraint-range")?;
    if scope == CheckScope::All {
        let selected = args.data.selected_cols()?;
        let train = task.data_path(Split::Train, 1)?;
        let valid = task.data_path(Split::Valid, 1)?;
        for path in if train == valid { vec![train] } else { vec![train, valid] } {
            let columns = first_row_columns(&path)?;
            if let Some(&c) = selected.iter().find(|&&c| c >= columns) {
                bail!(
                    "--selected-cols names column {c}, but the first row of {} has {columns} columns",
                    path.display()
                );
            }
            done.push(format!("data: {} ({columns} columns)", path.display()));
        }
    }
    if let Some(df) = &args.eval.eval_cider_cached_tokens {
        anyhow::ensure!(df.is_file(), "--eval-cider-cached-tokens {} does not exist", df.display());
    }
    Ok(done)
}

/// The number of tab-separated columns of a TSV file's first row.
fn first_row_columns(path: &Path) -> Result<usize> {
    let file = std::fs::File::open(path).with_context(|| format!("opening the TSV file {}", path.display()))?;
    let mut line = Vec::new();
    std::io::BufReader::new(file)
        .read_until(b'\n', &mut line)
        .with_context(|| format!("reading {}", path.display()))?;
    if line.iter().all(u8::is_ascii_whitespace) {
        bail!("{} has no rows", path.display());
    }
    Ok(line.split(|&b| b == b'\t').count())
}

/// `dir`, or the nearest folder above it that exists, accepts new files.
fn writable_dir(dir: &Path) -> Result<()> {
    let absolute = std::path::absolute(dir).with_context(|| format!("save dir {}", dir.display()))?;
    let existing = absolute.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if !existing.is_dir() {
        bail!("the save dir {} cannot be made: {} is not a folder", dir.display(), existing.display());
    }
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .with_context(|| format!("save dir {}", dir.display()))?;
    // SAFETY: access(2) reads the NUL-terminated path and has no other preconditions.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        bail!("the save dir {} cannot be written: {} is not writable", dir.display(), existing.display());
    }
    Ok(())
}
