//! Thin binary: parse the command line and call into the library.

use std::process::ExitCode;

use clap::Parser;
use operator::cli::{Cli, Command};

fn main() -> ExitCode {
    match Cli::parse().into_command() {
        Command::Crd => print_result(operator::render::crd_yaml()),
        Command::Render(args) => print_result(operator::render::render_file(&args)),
        Command::Run(_args) => {
            eprintln!("error: `run` is not available in this build yet");
            ExitCode::FAILURE
        }
    }
}

fn print_result<E: std::fmt::Display>(result: Result<String, E>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
