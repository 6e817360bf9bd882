//! What a clone, import or export says while it runs: vmkfstools' lines (`Destination disk
//! format: …`, `Cloning disk '…'...`, `Clone: N% done.`), a progress bar on a terminal, or one JSON
//! event per line with `--json`; and on failure `Failed to clone disk: REASON.` on standard error.
//!
//! The messages go to standard output, or to standard error when standard output carries the disk
//! (`-e -`). Everything is written through [`crate::out`], so a reader that goes away never stops
//! the copy.

use std::io::IsTerminal;
use std::path::Path;

use vmkfs::error::{exit, Result};

use crate::{out, Cli};

/// The messages of one clone, import or export.
pub struct Messages {
    json: bool,
    to_stderr: bool,
    bar: Option<indicatif::ProgressBar>,
    last_pct: u64,
}

impl Messages {
    /// Messages for the command line `cli`, on standard error when `to_stderr`.
    pub fn new(cli: &Cli, to_stderr: bool) -> Messages {
        let json = cli.common.json;
        let tty = !json && if to_stderr { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
        let bar = tty.then(|| {
            let target = if to_stderr {
                indicatif::ProgressDrawTarget::stderr()
            } else {
                indicatif::ProgressDrawTarget::stdout()
            };
            let b = indicatif::ProgressBar::with_draw_target(Some(0), target);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "Clone: {percent:>3}% [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        });
        Messages { json, to_stderr, bar, last_pct: u64::MAX }
    }

    fn line(&self, s: &str) {
        if self.to_stderr {
            out::err_line(s);
        } else {
            out::line(s);
        }
    }

    fn event(&self, v: serde_json::Value) {
        self.line(&v.to_string());
    }

    /// The first lines: the destination format and the source.
    pub fn start(&self, src: &Path, dst: &Path, format: &str, description: &str) {
        if self.json {
            self.event(serde_json::json!({"event": "start", "source": src, "destination": dst, "format": format}));
        } else {
            self.line(&format!("Destination disk format: {description}"));
            self.line(&format!("Cloning disk '{}'...", src.display()));
        }
    }

    /// `done` of `total` bytes copied: a line (or event) each time the percentage changes.
    pub fn progress(&mut self, done: u64, total: u64) {
        let pct = (done.saturating_mul(100)).checked_div(total).unwrap_or(100).min(100);
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        } else if pct != self.last_pct {
            self.last_pct = pct;
            if self.json {
                self.event(serde_json::json!({"event": "progress", "done": done, "total": total, "percent": pct}));
            } else {
                self.line(&format!("Clone: {pct}% done."));
            }
        }
    }

    /// The end: the `done` event (with `--json`) or the error, and the exit code.
    pub fn finish(&self, cli: &Cli, result: &Result<serde_json::Value>) -> i32 {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
            if result.is_ok() {
                self.line("Clone: 100% done.");
            }
        }
        match result {
            Ok(done) => {
                if self.json {
                    self.event(done.clone());
                }
                exit::OK
            }
            Err(e) => crate::report_clone_error(cli, e),
        }
    }
}
