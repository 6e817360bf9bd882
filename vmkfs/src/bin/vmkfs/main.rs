//! `vmkfs`: the vmkfstools-style command. Parses the command line into one [`vmkfs::op::Op`]
//! (`parse.rs`; the options by subject are in `args.rs`), runs it with [`vmkfs::op::run`], printing
//! through one [`Reporter`], and maps the result to an exit code.

mod args;
mod parse;
#[path = "../process/mod.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, Args, CommandFactory, Parser};
use vmkfs::error::{Error, Result};
use vmkfs::repo::location::parse_location;
use vmkfs::report::{Reporter, Wording};

/// A userspace vmkfstools for VMDK disks.
#[derive(Parser, Debug)]
#[command(name = "vmkfs", version, about, disable_help_flag = true)]
pub struct Cli {
    #[command(flatten)]
    pub disk: args::DiskArgs,
    #[command(flatten)]
    pub redo: args::RedoArgs,
    #[command(flatten)]
    pub rdm: args::RdmArgs,
    #[command(flatten)]
    pub vmfs: args::VmfsArgs,
    #[command(flatten)]
    pub stream: args::StreamArgs,
    #[command(flatten)]
    pub nbd: args::NbdArgs,
    #[command(flatten)]
    pub mount: args::MountArgs,
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
    /// More detail on standard error: 1 the chain and what a copy read and wrote, 2 also the
    /// engine settings and bytes per link, 3 also every allocation run.
    #[arg(short = 'v', long = "verbose", value_name = "N")]
    pub verbose: Option<u32>,
    /// Copy-engine reader threads (for test harnesses: repeatable runs).
    #[arg(long = "threads", value_name = "N", hide = true, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Option<u32>,
    /// Copy-engine chunk size in KiB, rounded up to a power of two (for test harnesses).
    #[arg(long = "chunk-kib", value_name = "N", hide = true, value_parser = clap::value_parser!(u32).range(4..=65536))]
    pub chunk_kib: Option<u32>,
    /// Copy-engine direct I/O: auto (past the page cache for large copies into flat files and
    /// devices), on or off (for benchmarks comparing them).
    #[arg(long = "direct-io", value_name = "WHEN", hide = true, value_parser = ["auto", "on", "off"])]
    pub direct_io: Option<String>,
    /// The restic repository's password file, for `-i restic:…` and `--apply restic:…` (else
    /// RESTIC_PASSWORD_FILE, else RESTIC_PASSWORD).
    #[arg(long = "password-file", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
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
            let code = if e.use_stderr() { process::USAGE } else { process::OK };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let mut rep = Reporter::new(process::sinks(), cli.common.json, cli.common.verbose);
    let code = run(&cli, &mut rep);
    process::finish(&rep, code)
}

fn run(cli: &Cli, rep: &mut Reporter) -> i32 {
    let usage = |rep: &Reporter, what: &str| {
        rep.err_line(format_args!("vmkfs: {what}"));
        process::USAGE
    };
    if parse::selected(cli) != 1 {
        return usage(rep, "give exactly one operation (for example -i, -c, --info); see --help");
    }
    if cli.nbd.writable && cli.nbd.serve_nbd.is_none() && cli.mount.mount.is_none() {
        return usage(rep, "--writable goes with --serve-nbd or --mount");
    }
    let restic = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| parse_location(&p.to_string_lossy()).is_some());
    if cli.common.password_file.is_some() && !restic(&cli.disk.clone) && !restic(&cli.redo.apply) {
        return usage(rep, "--password-file goes with -i restic:… or --apply restic:…");
    }
    if let Err(e) = check_disk_names(cli) {
        return report(rep, &e, false);
    }
    let copy = cli.disk.clone.is_some() || cli.stream.export_file.is_some();
    let op = match parse::op(cli) {
        Ok(Some(op)) => op,
        Ok(None) => {
            // `-h` alone prints help, as it always has.
            let _ = Cli::command().print_help();
            return process::OK;
        }
        Err(e) => return report(rep, &e, copy),
    };
    let c = &cli.common;
    let settings = vmkfs::op::Settings {
        force: c.force,
        allow_outside: c.allow_outside,
        wait: vmkfs::op::parse::wait(c.wait),
        volume: cli.vmfs.volume.clone(),
        tuning: vmkfs::op::parse::tuning(c.threads, c.chunk_kib, c.direct_io.as_deref()),
        password: process::restic_password(c.password_file.as_deref()),
        stdio: process::stdio(),
        ..Default::default()
    };
    match vmkfs::op::run(op, &settings, rep) {
        Ok(o) => process::of_outcome(o),
        Err(e) => report(rep, &e, copy),
    }
}

/// Refuses, before any I/O, a disk argument that names no disk file ([`vmkfs::op::check_disk_name`]).
/// `-` (standard input or output) passes where a pipe is allowed; `-P`'s target is a list of devices.
fn check_disk_names(cli: &Cli) -> Result<()> {
    let (d, r, s, pipe) = (&cli.disk, &cli.redo, &cli.stream, |p: &&PathBuf| p.as_path() != Path::new("-"));
    let target = cli.common.target.as_ref().filter(|_| !cli.vmfs.queryfs);
    let (i, e) = (d.clone.as_ref().filter(pipe), s.export_file.as_ref().filter(pipe));
    let names = [target, i, e, d.rename.as_ref(), d.compare.as_ref(), r.since.as_ref(), r.export_delta.as_ref()];
    let on_host = cli.vmfs.volume.is_empty();
    names.into_iter().chain([r.apply.as_ref()]).flatten().try_for_each(|p| vmkfs::op::check_disk_name(p, on_host))
}

/// Prints an error the way every operation does (`vmkfs: REASON`; for a `copy`, `Failed to clone
/// disk: REASON.`; or one JSON object with `--json`), returning its exit code. A reader of the
/// data on standard output that went away is told nothing: the transfer did not complete.
fn report(rep: &Reporter, e: &Error, copy: bool) -> i32 {
    if e.is_broken_pipe() {
        return process::IO;
    }
    let code = process::of_error(e);
    rep.error(e, if copy { Wording::Clone } else { Wording::Tool("vmkfs") }, code);
    code
}

#[cfg(test)]
mod tests {
    /// The option table is consistent (unique names, valid `requires`), whatever the build.
    #[test]
    fn command_line_definition_is_valid() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
