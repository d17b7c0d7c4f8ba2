//! `elfin-train`: one rank of an elfin run, and the inspection commands.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "elfin-train",
    about = "One elfin training rank (start it under mpirun, or through `elfin launch`), and tools to inspect the loss, the model and the data",
    disable_version_flag = true
)]
struct Cli {
    /// Print the version, the libtorch and MPI versions, and whether CUDA and NCCL are usable.
    #[arg(short = 'V', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train: one rank of a finetuning run (the command `elfin launch` starts under mpirun).
    Train(Box<elfin_trainer::train::TrainArgs>),
    /// Validate a checkpoint (or the untrained model): write predictions and print the scores.
    Eval(Box<elfin_trainer::train::eval_cli::EvalCmdArgs>),
    /// Caption an image, or find the box of a referring expression, with a trained checkpoint.
    Predict(elfin_trainer::train::predict_cli::PredictArgs),
    /// Score a saved predictions file with the validation metrics (CIDEr-D, Acc@0.5).
    Score(elfin_trainer::eval::score_cli::ScoreArgs),
    /// Tokenize lines of standard input with an OFA BPE folder: one JSON line `{"text", "ids"}` each.
    Tokenize(elfin_trainer::data::cli::TokenizeArgs),
    /// Write a synthetic dataset (train.tsv, val.tsv, bpe/) in the reference's TSV layout.
    Synth(elfin_trainer::data::synth::SynthArgs),
    /// Turn your own annotations and images into the reference's TSV files (caption or refcoco).
    Prepare(elfin_trainer::prepare::PrepareArgs),
    /// Build a model (optionally loading a converted checkpoint) and print its parameter counts.
    Model(elfin_trainer::model::cli_model::ModelCommand),
    /// Run one eval-mode forward pass of a checkpoint on saved inputs and save logits and encoder output.
    Forward(elfin_trainer::model::cli_forward::ForwardArgs),
    /// Beam search on saved inputs: write each sample's hypotheses, token scores and scores.
    Generate(Box<elfin_trainer::generate::cli::GenerateArgs>),
    /// Compute the encouraging loss on saved logits: prints {"loss", "nll_loss", "ntokens", "sample_size"}.
    Criterion(elfin_trainer::criterion::cli::CriterionCmdArgs),
    /// Check this machine for elfin: versions, devices, NVRTC, the fused loss, collectives (PASS/FAIL/SKIP lines).
    Doctor(elfin_trainer::doctor::command::DoctorArgs),
}

fn main() -> ExitCode {
    // `elfin-train score ... | head`: end quietly when the reader goes, as Unix
    // tools do (--help included). Training instead goes on without a console.
    if std::env::args().nth(1).as_deref() != Some("train") {
        elfin_trainer::signals::default_sigpipe();
    }
    let cli = Cli::parse();
    if cli.version {
        print!("{}", elfin_trainer::version::report());
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("elfin-train: no command given; see `elfin-train --help`");
        return ExitCode::from(2);
    };
    let result: anyhow::Result<()> = match command {
        Command::Train(args) => elfin_trainer::train::run(*args),
        Command::Eval(args) => elfin_trainer::train::eval_cli::run(*args),
        Command::Predict(args) => elfin_trainer::train::predict_cli::run(args),
        Command::Score(args) => elfin_trainer::eval::score_cli::run(args),
        Command::Tokenize(args) => elfin_trainer::data::cli::run_tokenize(&args),
        Command::Synth(args) => elfin_trainer::data::synth::run(&args),
        Command::Prepare(args) => elfin_trainer::prepare::run(args),
        Command::Model(args) => elfin_trainer::model::cli_model::run(args),
        Command::Forward(args) => elfin_trainer::model::cli_forward::run(args),
        Command::Criterion(args) => elfin_trainer::criterion::cli::run(args),
        Command::Doctor(args) => elfin_trainer::doctor::command::run(args),
        Command::Generate(args) => elfin_trainer::generate::cli::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<elfin_trainer::train::Preempted>() => {
            say_line(format!("elfin-train: {err:#}; start the run again with the same --save-dir to resume"));
            ExitCode::from(elfin_trainer::signals::EXIT_PREEMPTED as u8)
        }
        Err(err) => {
            say_line(format!("elfin-train: error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

/// One line to stderr in a single write: the ranks of a job share one
/// stderr (mpirun's), where `eprintln!`'s several writes per line can
/// interleave with another rank's line.
fn say_line(line: String) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}
