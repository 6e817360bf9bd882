//! `vmkfs`: the vmkfstools-style command. Parses flags, calls the library, prints.
//!
//! Options are grouped by subject, one module each (`disk.rs`: create, clone, inspect and change
//! disks); `main.rs` holds the options every operation shares and the dispatch.

mod disk;
mod rdm;
mod redo;
mod stream;
mod vmfs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser};
use vmkfs::error::{exit, Error, Result};
use vmkfs::vmdk::OpenOptions;

/// A userspace vmkfstools for VMDK disks.
#[derive(Parser, Debug)]
#[command(name = "vmkfs", version, about, disable_help_flag = true)]
pub struct Cli {
    #[command(flatten)]
    pub disk: disk::DiskArgs,
    #[command(flatten)]
    pub redo: redo::RedoArgs,
    #[command(flatten)]
    pub rdm: rdm::RdmArgs,
    #[command(flatten)]
    pub vmfs: vmfs::VmfsArgs,
    #[command(flatten)]
    pub stream: stream::StreamArgs,
    #[command(flatten)]
    pub common: Common,
}

/// Options shared by every operation.
#[derive(Args, Debug)]
pub struct Common {
    /// Disk format: zeroedthick (default), eagerzeroedthick, thin, thick, 2gbsparse, monosparse, monoflat, 2gbflat,
    /// streamoptimized; for -e - also raw (plain bytes);
    /// for -i also rdm:DEV, rdmp:DEV, raw:DEV (clone onto a device).
    #[arg(short = 'd', long = "diskformat", value_name = "FMT")]
    pub format: Option<String>,
    /// Adapter type: ide, buslogic, lsilogic (default), lsisas, pvscsi.
    #[arg(short = 'a', long = "adaptertype", value_name = "ADAPTER")]
    pub adapter: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Allow replacing an existing destination.
    #[arg(long)]
    pub force: bool,
    /// Allow extent paths outside the disk's folder.
    #[arg(long = "allow-outside-paths")]
    pub allow_outside: bool,
    /// Wait up to SECONDS for a disk another process has locked, instead of failing at once.
    #[arg(long = "wait", value_name = "SECONDS")]
    pub wait: Option<f64>,
    /// More detail on standard error.
    #[arg(short = 'v', long = "verbose", value_name = "N")]
    pub verbose: Option<u32>,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
    /// The disk operated on.
    #[arg(value_name = "TARGET")]
    pub target: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    // Each subject module counts the operations it sees selected; exactly one must be.
    let selected = disk::selected(&cli)
        + redo::selected(&cli)
        + rdm::selected(&cli)
        + vmfs::selected(&cli)
        + stream::selected(&cli);
    if selected != 1 {
        eprintln!("vmkfs: give exactly one operation (for example -i, -c, --info); see --help");
        return ExitCode::from(exit::USAGE as u8);
    }
    let code = stream::run(&cli)
        .or_else(|| disk::run(&cli))
        .or_else(|| redo::run(&cli))
        .or_else(|| rdm::run(&cli))
        .or_else(|| vmfs::run(&cli))
        .unwrap_or(exit::USAGE);
    ExitCode::from(code as u8)
}

/// The target path (the last positional argument).
pub fn target(cli: &Cli) -> Result<&Path> {
    cli.common.target.as_deref().ok_or_else(|| Error::Usage("missing the target disk path".into()))
}

/// How to open disks read-only.
pub fn open_options(cli: &Cli) -> OpenOptions {
    let storage = vmfs::storage(cli).unwrap_or_else(|| OpenOptions::read().storage);
    let mut o = OpenOptions { allow_outside: cli.common.allow_outside, storage, ..OpenOptions::read() };
    if let Some(w) = cli.common.wait.filter(|w| w.is_finite() && *w >= 0.0) {
        o.wait = std::time::Duration::from_secs_f64(w.min(1e6));
    }
    o
}

/// How to open disks for writing.
pub fn rw_options(cli: &Cli) -> OpenOptions {
    OpenOptions { write: true, ..open_options(cli) }
}

/// Prints an error the way every operation does (a JSON object with `--json`), returning its exit code.
pub fn report_error(cli: &Cli, e: &Error) -> i32 {
    if cli.common.json {
        println!("{}", serde_json::json!({"event": "error", "message": e.to_string(), "exit": e.exit_code()}));
    } else {
        eprintln!("vmkfs: {e}");
    }
    e.exit_code()
}

/// Parses a byte offset or length (`N`, `Nk`, `Nm`, `Ng`, `Nt`; any multiple).
pub fn parse_offset(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return Err(Error::Usage(format!("{s:?}: unknown unit {c:?}"))),
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Error::Usage(format!("{s:?} is not a byte offset")))
}

/// A byte count for people.
pub fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
