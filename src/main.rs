//! The `torch2coreml` binary: parses the command line, runs it, and turns the outcome into an
//! exit code (0 success, 1 check failed, 2 error). Errors print as one line on stderr.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) => {
            eprintln!("torch2coreml: error: {e:#}");
            ExitCode::from(cli::ExitStatus::Error as u8)
        }
    }
}
