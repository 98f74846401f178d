use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    ferric_cli::run(ferric_cli::Cli::parse())
}
