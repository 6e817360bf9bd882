//! `--serve-nbd SOCKET [--writable] DISK`: serve a disk or chain over NBD (the library's
//! `vmkfs::nbd`), until SIGINT or SIGTERM.

use clap::Args;
use vmkfs::error::{exit, Result};
use vmkfs::nbd::{serve_disk, Address, NbdOptions};

use crate::out::outln;
use crate::{open_options, out, target, Cli};

/// NBD serving.
#[derive(Args, Debug)]
pub struct NbdArgs {
    /// Serve the target disk (a chain: read through every link) over NBD on SOCKET: a Unix socket
    /// path, tcp:127.0.0.1:PORT or tcp:[::1]:PORT. Read-only unless --writable; ends on SIGINT/SIGTERM.
    #[arg(long = "serve-nbd", value_name = "SOCKET")]
    pub serve_nbd: Option<String>,
    /// With --serve-nbd or --mount: accept writes, into the top link (locked exclusively while
    /// served or mounted).
    #[arg(long = "writable")]
    pub writable: bool,
}

/// How many NBD operations the command line selects.
pub fn selected(cli: &Cli) -> usize {
    usize::from(cli.nbd.serve_nbd.is_some())
}

/// Runs `--serve-nbd`; `None` when it is not selected.
pub fn run(cli: &Cli) -> Option<i32> {
    let socket = cli.nbd.serve_nbd.as_deref()?;
    Some(run_serve(cli, socket).unwrap_or_else(|e| crate::report_error(cli, &e)))
}

fn run_serve(cli: &Cli, socket: &str) -> Result<i32> {
    let disk = target(cli)?;
    let address = Address::parse(socket)?;
    let opts = NbdOptions {
        open: open_options(cli),
        writable: cli.nbd.writable,
        cancel: Some(crate::disk::install_interrupt_handler()),
        max_connections: 0,
    };
    let json = cli.common.json;
    let report = serve_disk(disk, &address, &opts, |uri| {
        if json {
            out::line(serde_json::json!({"event": "listening", "uri": uri, "writable": opts.writable}));
        } else {
            outln!("Serving {} on {uri}{}", disk.display(), if opts.writable { " (writable)" } else { "" });
        }
    })?;
    if json {
        out::line(serde_json::json!({"event": "stopped", "connections": report.connections,
            "requests": report.requests, "broken": report.broken}));
    } else {
        outln!("Stopped after {} connection(s), {} request(s).", report.connections, report.requests);
    }
    if let (Some(why), true) = (&report.last_broken, cli.common.verbose.is_some()) {
        out::err_line(format!("vmkfs: {} connection(s) ended early; the last: {why}", report.broken));
    }
    Ok(exit::OK)
}
