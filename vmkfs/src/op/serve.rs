//! Serving a disk: `--serve-nbd SOCKET [--writable] DISK` over NBD ([`crate::nbd`]) and
//! `--mount DIR [--writable] DISK` as one image file in a FUSE mount ([`crate::mount`]), until
//! SIGINT or SIGTERM ([`crate::interrupt`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::mount::{serve, MountOptions};
use crate::nbd::{serve_disk, Address, NbdOptions};
use crate::report::Reporter;
use crate::Disk;

use super::settings::{Outcome, Settings};
use crate::report::outln;

/// A serving operation.
#[derive(Debug)]
pub enum ServeOp {
    /// `--serve-nbd SOCKET DISK`.
    Nbd {
        /// The disk (a chain: read through every link).
        path: PathBuf,
        /// Where to listen.
        address: Address,
        /// Accept writes into the top link.
        writable: bool,
    },
    /// `--mount DIR DISK`.
    Mount {
        /// The disk.
        path: PathBuf,
        /// The mount point.
        dir: PathBuf,
        /// Accept writes into the top link.
        writable: bool,
    },
}

/// Runs a serving operation, until it is interrupted.
pub fn run(op: ServeOp, s: &Settings, r: &Reporter) -> Result<Outcome> {
    match op {
        ServeOp::Nbd { path, address, writable } => run_nbd(s, r, &path, &address, writable)?,
        ServeOp::Mount { path, dir, writable } => run_mount(s, r, &path, &dir, writable)?,
    }
    Ok(Outcome::Done)
}

fn run_nbd(s: &Settings, r: &Reporter, disk: &Path, address: &Address, writable: bool) -> Result<()> {
    let opts =
        NbdOptions { open: s.open_options(), writable, cancel: Some(crate::interrupt::install()), max_connections: 0 };
    let json = r.json();
    let report = serve_disk(disk, address, &opts, |uri| {
        if json {
            r.line(serde_json::json!({"event": "listening", "uri": uri, "writable": opts.writable}));
        } else {
            outln!(r, "Serving {} on {uri}{}", disk.display(), if opts.writable { " (writable)" } else { "" });
        }
    })?;
    if json {
        r.line(serde_json::json!({"event": "stopped", "connections": report.connections,
            "requests": report.requests, "broken": report.broken}));
    } else {
        outln!(r, "Stopped after {} connection(s), {} request(s).", report.connections, report.requests);
    }
    if let (Some(why), true) = (&report.last_broken, r.verbose_given()) {
        r.err_line(format!("vmkfs: {} connection(s) ended early; the last: {why}", report.broken));
    }
    Ok(())
}

fn run_mount(s: &Settings, r: &Reporter, path: &Path, dir: &Path, writable: bool) -> Result<()> {
    let disk = Disk::open_with(path, &if writable { s.rw_options() } else { s.open_options() })?;
    let stop = crate::interrupt::install();
    let out = r.line_sink();
    let messages = r.message_sink();
    let opts = MountOptions {
        writable,
        name: None,
        on_mounted: Some(Arc::new(move |image: &Path| out.line(format_args!("Mounted: {}", image.display())))),
        on_io_error: Some(Arc::new(move |m: &str| messages.line(format_args!("vmkfs: {m}")))),
    };
    serve(disk, dir, &opts, stop)
}
