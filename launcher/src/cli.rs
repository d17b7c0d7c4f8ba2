//! Command-line arguments of `elfin`'s subcommands.

use crate::plan::Nproc;
use crate::preset::resolve::parse_set;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where presets and data are found; shared by `presets` and `launch`.
#[derive(Args, Debug, Clone, Default)]
pub struct PresetSource {
    /// Look for presets in DIR first (repeatable), before the directories of
    /// ELFIN_PRESET_PATH (`:`-separated) and the built-in presets.
    #[arg(long = "preset-dir", value_name = "DIR", global = true)]
    pub preset_dirs: Vec<PathBuf>,
    /// The directory the presets' data and checkpoint paths are under
    /// (caption_data/, refcoco_data/, ..., checkpoints/, BPE/, synth/);
    /// default: the current directory.
    #[arg(long, value_name = "DIR", env = "ELFIN_DATA_ROOT", global = true)]
    pub data_root: Option<String>,
}

#[derive(Args, Debug)]
pub struct PresetsArgs {
    #[command(flatten)]
    pub source: PresetSource,
    #[command(subcommand)]
    pub command: Option<PresetsCommand>,
}

#[derive(Subcommand, Debug)]
pub enum PresetsCommand {
    /// Print a preset's variables, one NAME=value per line, then the trainer command line.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// A preset name (see `elfin presets`) or a preset file's path.
    pub name: String,
    /// Override a preset variable, or pass another `elfin-train train` flag by name (max_update for --max-update).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    pub sets: Vec<(String, String)>,
    /// Show the command for CPU ranks (`--device=cpu`).
    #[arg(long)]
    pub cpu: bool,
}

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// The preset to run: a name (see `elfin presets`) or a preset file's path.
    #[arg(long, value_name = "NAME")]
    pub preset: String,
    /// Override a preset variable, or pass another `elfin-train train` flag by
    /// name (max_update for --max-update). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    pub sets: Vec<(String, String)>,
    /// Ranks per node: a number, or `auto` for one per visible GPU
    /// (CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`; with a hostfile, each host's slots), else 1 on the CPU.
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    pub nproc_per_node: Nproc,
    /// An Open MPI hostfile (`host slots=N` per line) to run on several nodes.
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
    /// Run on the CPU even where GPUs are visible.
    #[arg(long)]
    pub cpu: bool,
    /// Where each rank writes rank-N-HOST.log (default: the preset's log_dir, else ./logs).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Print the plan and the command, have the trainer check its command
    /// line and paths (on every host), and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Restart the whole job from checkpoint_last up to N times when a rank
    /// dies (a crash, kill -9, out of memory) or the ranks are preempted by a
    /// signal not sent to `elfin launch` (as torchrun's --max-restarts).
    /// A stop sent to `elfin launch` itself always ends the job (status 75).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_restarts: u32,
    /// Seconds to wait before each restart.
    #[arg(long, value_name = "S", default_value_t = 3.0, value_parser = parse_seconds)]
    pub restart_delay: f64,
    #[command(flatten)]
    pub source: PresetSource,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds (0 or more)")),
    }
}

#[derive(Args, Debug)]
pub struct RankArgs {
    /// The directory of the rank-N-HOST.log files.
    #[arg(long, value_name = "DIR")]
    pub log_dir: PathBuf,
    /// The trainer's command line.
    #[arg(last = true, required = true)]
    pub trainer: Vec<String>,
}
