//! Output plumbing shared by subcommands: the `--format` choice and writing to stdout so that a
//! closed pipe (`| head`) ends the program quietly instead of panicking.

use std::io::Write;

/// How a subcommand prints its report.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON document, for scripts and CI.
    Json,
}

/// Writes `text` to stdout. A broken pipe counts as success (ripgrep's rule); other errors bubble up.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

/// Pretty JSON with a trailing newline.
pub fn json(value: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_default();
    s.push('\n');
    s
}

/// `1.5 MB`, `12.0 KB`, `512 B`: sizes in summaries.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} KB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}
