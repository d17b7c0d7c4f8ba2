//! `elfin`: run a finetuning preset on one node or many through mpirun.

use clap::{Parser, Subcommand};
use elfin_launcher::{cli, doctor, launch, presets_command, report, run, stop};
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
    /// One rank under mpirun: runs the trainer with its output in LOG_DIR/rank-N.log (started by `launch`).
    #[command(hide = true)]
    Rank(cli::RankArgs),
    /// Write one self-contained HTML page with the curves and validation samples of one or more runs.
    Report(report::ReportArgs),
    /// Check this machine (and the hosts of a hostfile) for elfin: one PASS/FAIL/SKIP line per check.
    Doctor(doctor::DoctorArgs),
}

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("launch" | "rank")) {
        // A job's processes may all be signalled at once: the launcher and each
        // rank's wrapper keep a stop request from their first instant on.
        stop::install(command.as_deref() == Some("rank"));
    } else {
        // `elfin presets show NAME | head`: end quietly when the reader goes
        // (--help included). A launcher instead keeps running its job.
        // SAFETY: setting a signal's disposition to its default has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Presets(args) => presets_command::run(args),
        Command::Launch(args) => launch::run(args),
        Command::Rank(args) => run::run_rank(&args.log_dir, &args.trainer),
        Command::Report(args) => report::run(args).map(|()| ExitCode::SUCCESS),
        Command::Doctor(args) => doctor::run(args),
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
