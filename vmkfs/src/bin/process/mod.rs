//! What the three binaries share with the process: its standard streams (the reporter's sinks,
//! the files `-i -` / `-e -` carry a disk through) and the exit codes of `cli.md`, mapped from
//! [`ErrorKind`]s and [`Outcome`]s.

#![allow(dead_code)]

use std::io::IsTerminal;
use std::os::fd::AsFd;

use vmkfs::error::{Error, ErrorKind};
use vmkfs::op::{Outcome, Stdio};
use vmkfs::repo::repo::PasswordSources;
use vmkfs::report::{Reporter, Sinks, Stream};

/// Success.
pub const OK: i32 = 0;
/// A negative answer (`--compare` differs, `-x check` found problems).
pub const NEGATIVE: i32 = 1;
/// Bad usage.
pub const USAGE: i32 = 2;
/// Bad or unsupported input.
pub const BAD_INPUT: i32 = 3;
/// I/O error.
pub const IO: i32 = 4;
/// Locked or busy.
pub const LOCKED: i32 = 5;

/// The exit code of an error.
pub fn of_error(e: &Error) -> i32 {
    match e.kind() {
        ErrorKind::Usage => USAGE,
        ErrorKind::BadInput => BAD_INPUT,
        ErrorKind::Io => IO,
        ErrorKind::Locked => LOCKED,
    }
}

/// The exit code of an operation that completed.
pub fn of_outcome(o: Outcome) -> i32 {
    match o {
        Outcome::Done => OK,
        Outcome::Negative => NEGATIVE,
        Outcome::Unusable => BAD_INPUT,
    }
}

/// The reporter's sinks: standard output and standard error.
pub fn sinks() -> Sinks {
    Sinks {
        out: Box::new(std::io::stdout()),
        err: Box::new(std::io::stderr()),
        out_is_terminal: std::io::stdout().is_terminal(),
        err_is_terminal: std::io::stderr().is_terminal(),
        draw_target: |s| match s {
            Stream::Out => indicatif::ProgressDrawTarget::stdout(),
            Stream::Err => indicatif::ProgressDrawTarget::stderr(),
        },
    }
}

/// Standard input and output as files (for the operations that carry a disk through them).
pub fn stdio() -> Stdio {
    Stdio {
        input: std::io::stdin().as_fd().try_clone_to_owned().ok().map(Into::into),
        output: std::io::stdout().as_fd().try_clone_to_owned().ok().map(Into::into),
        input_is_terminal: std::io::stdin().is_terminal(),
        output_is_terminal: std::io::stdout().is_terminal(),
    }
}

/// Where the repository's password comes from: `--password-file`, else the environment restic
/// reads (`RESTIC_PASSWORD_FILE`, `RESTIC_PASSWORD`).
pub fn restic_password(file: Option<&std::path::Path>) -> PasswordSources {
    PasswordSources {
        file: file.map(std::path::Path::to_path_buf),
        env_file: std::env::var_os("RESTIC_PASSWORD_FILE"),
        env_password: std::env::var_os("RESTIC_PASSWORD"),
    }
}

/// The process's exit status for a run that ended with `code`: a failure to write standard
/// output other than its reader going away makes a successful run an I/O failure.
pub fn finish(rep: &Reporter, code: i32) -> std::process::ExitCode {
    let code = if rep.output_failed(code == OK) { IO } else { code };
    std::process::ExitCode::from(code as u8)
}
