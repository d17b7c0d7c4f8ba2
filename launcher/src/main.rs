//! `elfin`: run a finetuning preset on one node or many through mpirun.

use clap::{Parser, Subcommand};
use elfin_launcher::{cli, launch, presets_command, report, run, stop};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "elfin", version, about = "Run elfin finetuning presets on one node or many")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the presets (name, task, description), or `show` one resolved.
    Presets(cli::PresetsArgs),
    /// Run a preset: one elfin-train rank per GPU (or CPU slot) on each node, through mpirun.
    Launch(cli::LaunchArgs),
    /// One rank under mpirun: runs the trainer with its output in LOG_DIR/rank-N-HOST.log (started by `launch`).
    #[command(hide = true)]
    Rank(cli::RankArgs),
    /// Write one self-contained HTML page with the curves and validation samples of one or more runs.
    Report(report::ReportArgs),
}

fn main() -> ExitCode {
    // A job's processes may all be signalled at once: the launcher and each
    // rank's wrapper keep a stop request from their first instant on.
    if matches!(std::env::args().nth(1).as_deref(), Some("launch" | "rank")) {
        stop::install(std::env::args().nth(1).as_deref() == Some("rank"));
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Launch(_) | Command::Rank(_)) {
        // `elfin presets show NAME | head`: end quietly when the reader goes.
        // (A launcher keeps running its job whatever happens to its console.)
        // SAFETY: setting a signal's disposition to its default has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Presets(args) => presets_command::run(args),
        Command::Launch(args) => launch::run(args),
        Command::Rank(args) => run::run_rank(&args.log_dir, &args.trainer),
        Command::Report(args) => report::run(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|err| {
        eprintln!("elfin: error: {err:#}");
        // A refused --set is a usage error, like a bad flag.
        if err.is::<elfin_launcher::preset::resolve::SetRefused>() {
            ExitCode::from(2)
        } else {
            ExitCode::FAILURE
        }
    })
}
