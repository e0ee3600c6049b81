//! Command-line front end: the clap definitions and one file per subcommand. The only module that
//! prints, reads terminal state, or uses `anyhow`; library errors get their file context here.

mod convert;
mod inspect;
mod lint;
mod output;
mod progress;
mod validate;
mod validate_speech;

use clap::{Parser, Subcommand};

/// Exit codes, as in ruff: 0 all good, 1 a check failed (validation over tolerance), 2 error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Success = 0,
    Failure = 1,
    Error = 2,
}

/// torch2coreml: convert PyTorch models to Core ML packages, rewrite them for the Apple Neural
/// Engine, and prove the result is right, on any OS.
#[derive(Parser, Debug)]
#[command(name = "torch2coreml", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a traced TorchScript model (.pt) to a Core ML package, without Python.
    Convert(convert::Args),
    /// Run a package in the MIL interpreter and compare its outputs with a reference.
    Validate(validate::Args),
    /// Show a package's signature, spec version, opset, op histogram and weights.
    Inspect(inspect::Args),
    /// Check a model (.pt or any .mlpackage) for patterns that keep it off the Neural Engine.
    #[command(name = "lint-ane")]
    LintAne(lint::Args),
}

/// Runs one parsed command line. Called by `main`.
pub fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    match cli.command {
        Command::Convert(args) => convert::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Validate(args) => validate::run(&args),
        Command::LintAne(args) => lint::run(&args),
    }
}
