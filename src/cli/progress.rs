//! Progress display: an indicatif spinner with the current stage on a terminal (stderr), nothing
//! at all when stderr is a pipe or file, so build scripts and CI logs stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How often the spinner redraws.
const TICK: Duration = Duration::from_millis(100);

/// A stage display; hidden unless stderr is a terminal.
pub struct Progress(ProgressBar);

impl Progress {
    /// A spinner on a terminal, a no-op otherwise.
    pub fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(ProgressBar::hidden());
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(TICK);
        Progress(bar)
    }

    /// Shows the stage now under way.
    pub fn stage(&self, message: &str) {
        self.0.set_message(message.to_string());
    }

    /// Removes the spinner.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
