//! The `torch2coreml` binary: parses the command line, runs it, and turns the outcome into an
//! exit code (0 success, 1 check failed, 2 error). Errors print as one line on stderr.

mod cli;

/// mimalloc instead of glibc malloc: conversions make and free millions of small values (op
/// names, arguments) and glibc's consolidation made large models superlinear.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

/// Exit code after Ctrl-C or SIGTERM (128 + SIGINT, the shell convention).
const INTERRUPTED: i32 = 130;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // A convert interrupted mid-write leaves no temporaries beside its output.
    let _ = ctrlc::set_handler(|| {
        torch2coreml::staging::remove_live();
        std::process::exit(INTERRUPTED);
    });
    let json = args.wants_json();
    match cli::run(args) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) => {
            eprintln!("torch2coreml: error: {}", cli::error_line(&e));
            if json {
                println!("{}", cli::error_json(&e));
            }
            ExitCode::from(cli::ExitStatus::Error as u8)
        }
    }
}
