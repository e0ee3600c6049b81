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

impl Cli {
    /// Whether the user asked for machine-readable output, so a failure must also print a JSON
    /// error object on stdout (`main` calls [`error_json`]).
    pub fn wants_json(&self) -> bool {
        match &self.command {
            Command::Convert(a) => a.format == output::Format::Json,
            Command::Validate(a) => a.format == output::Format::Json,
            Command::Inspect(a) => a.format == output::Format::Json,
            Command::LintAne(a) => a.format != lint::LintFormat::Text,
        }
    }
}

/// The one line `main` prints on stderr for an error: the whole chain, control characters
/// escaped and each part cut to a readable length (a crafted file's names must not clear the
/// terminal or print fake lines, and a 10 MB `model_type` is not echoed whole).
pub fn error_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e.chain().map(|c| torch2coreml::files::shown_up_to(&c.to_string(), torch2coreml::files::MAX_ERROR_PART_CHARS)).collect();
    // A cause already quoted by its context (thiserror's `{source}`) is not repeated.
    let mut line = String::new();
    for p in parts {
        if !line.contains(&p) {
            if !line.is_empty() {
                line += ": ";
            }
            line += &p;
        }
    }
    line
}

/// `{"error": {"kind", "file", "message"}}` for a failure under `--format json`: `kind` is the
/// stage that failed (from the error's type), `file` the path the message starts with, if any.
pub fn error_json(e: &anyhow::Error) -> serde_json::Value {
    use torch2coreml::{files, hf, package, pipeline, staging, torchscript};
    let kind = e
        .chain()
        .find_map(|c| {
            if c.is::<staging::Error>() {
                Some("output")
            } else if c.is::<files::Error>() {
                Some("input-file")
            } else if let Some(pipeline::Error::Input { .. }) = c.downcast_ref::<pipeline::Error>() {
                Some("input")
            } else if let Some(torchscript::Error::Unsupported { .. }) = c.downcast_ref::<torchscript::Error>() {
                Some("unsupported-ops")
            } else if c.is::<torchscript::Error>() {
                Some("torchscript")
            } else if c.is::<hf::HfError>() {
                Some("hugging-face-folder")
            } else if c.is::<package::Error>() {
                Some("package")
            } else {
                None
            }
        })
        .unwrap_or("error");
    let message = error_line(e);
    let file = message.split_once(": ").map(|(f, _)| f).filter(|f| {
        let p = std::path::Path::new(f);
        p.exists() || p.parent().is_some_and(|d| d.as_os_str().is_empty() || d.exists())
    });
    serde_json::json!({ "error": { "kind": kind, "file": file, "message": message } })
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
