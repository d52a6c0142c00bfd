//! Thin binary: parse the command line and call into the library.

use std::process::ExitCode;

use clap::Parser;
use operator::cli::{Cli, Command, RunArgs};

fn main() -> ExitCode {
    match Cli::parse().into_command() {
        Command::Crd => print_result(operator::render::crd_yaml()),
        Command::Render(args) => print_result(operator::render::render_file(&args)),
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    operator::telemetry::init(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(operator::controller::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
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
