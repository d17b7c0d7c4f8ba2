//! `elfin`: run a finetuning preset on one node or many through mpirun.

use clap::Parser;

#[derive(Parser)]
#[command(name = "elfin", version, about = "Run elfin finetuning presets on one node or many")]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
