//! Standard output and standard error: everything the command prints goes through here.
//!
//! A reader that goes away (`vmkfs --info X | head -1`: the pipe is closed, writes fail with
//! `EPIPE`) ends the output quietly: nothing more is written and nothing is said about it, and the
//! operation finishes with its own exit status (a clone whose progress reader went away still
//! completes). Data written for a reader ([`data`]: `--read-at`) is different: a transfer that
//! cannot complete is an error (the caller stops, exit 4; see `report_error` in `main.rs`). Any other
//! failure to write standard output (a full disk behind `>`) also stops the output, and turns a
//! successful run into an I/O failure ([`finish`]) so that a truncated output never looks complete.

use std::fmt::{Arguments, Display};
use std::io::{self, ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmkfs::error::{exit, Error, Result};

/// Set once standard output failed: nothing more is written to it.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// The first failure writing standard output that was not its reader going away.
static FAILURE: Mutex<Option<io::Error>> = Mutex::new(None);

/// `println!` through [`line()`]: `outln!("Clone: {pct}% done.")`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Prints a line on standard output (and flushes it, so progress shows as it happens).
pub fn line(s: impl Display) {
    write_out(format_args!("{s}\n"));
}

/// Prints text without a newline (and flushes it).
pub fn text(s: impl Display) {
    write_out(format_args!("{s}"));
}

/// Prints a value as pretty JSON on standard output.
pub fn json_pretty(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => line(s),
        Err(e) => err_line(format!("vmkfs: cannot format JSON output: {e}")),
    }
}

/// Prints a line on standard error. A failure there has nowhere to be reported and is ignored.
pub fn err_line(s: impl Display) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{s}").and_then(|_| err.flush());
}

/// True once standard output can take nothing more (its reader went away): informational
/// commands with long output may stop producing it.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Writes bytes the reader asked for (the disk's contents) to standard output. A failure, a reader
/// that went away included, is an error: the transfer did not complete.
pub fn data(buf: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(buf).map_err(stdout_error)
}

/// Flushes what [`data`] wrote.
pub fn flush_data() -> Result<()> {
    io::stdout().lock().flush().map_err(stdout_error)
}

/// The exit code of a command whose operation ended with `code`: a failure to write standard
/// output other than its reader going away makes a successful run an I/O failure (reported here).
pub fn finish(code: i32) -> i32 {
    let failure = FAILURE.lock().unwrap_or_else(|p| p.into_inner()).take();
    match failure {
        Some(e) if code == exit::OK => {
            err_line(format!("vmkfs: <stdout>: {e}"));
            exit::IO
        }
        _ => code,
    }
}

fn stdout_error(e: io::Error) -> Error {
    CLOSED.store(true, Ordering::Relaxed);
    Error::Io { path: "<stdout>".into(), source: e }
}

fn write_out(args: Arguments<'_>) {
    if closed() {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != ErrorKind::BrokenPipe {
            FAILURE.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
        }
    }
}
