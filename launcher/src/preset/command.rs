//! Which `elfin-train` command a preset runs: `train` (the finetuning
//! presets), or `eval` for the evaluation presets, chosen by the preset
//! variable `trainer_command`.

use super::resolve::Resolved;
use anyhow::{bail, Result};

/// The preset variable naming the trainer command.
pub const VARIABLE: &str = "trainer_command";

/// The trainer command of a resolved preset; `train` when the preset does not say.
pub fn trainer_subcommand(resolved: &Resolved) -> Result<&'static str> {
    match resolved.get(VARIABLE).unwrap_or("") {
        "" | "train" => Ok("train"),
        "eval" => Ok("eval"),
        other => bail!("{VARIABLE}={other}: elfin launch runs `train` or `eval`; set {VARIABLE} to one of them"),
    }
}
